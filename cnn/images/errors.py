"""The errors of image decoding: a bad image (ImageError) and a batch over its
pixel budget (PixelBudgetError), each naming what went wrong."""

class ImageError(ValueError):
    """An image could not be used: its message says which image and why.

    ``index`` (position in a batch, 0-based) and ``name`` (file name or path)
    are None when unknown; ``reason`` is the message without the prefix.
    """

    def __init__(self, reason, *, index=None, name=None):
        self.reason = reason
        self.index = index
        self.name = name
        super().__init__(f"{_label(index, name)}: {reason}")

    def __reduce__(self):  # keep the parts (and one prefix) across pickling
        return (_rebuild_image_error, (type(self), self.reason, self.index, self.name))


def _rebuild_image_error(cls, reason, index, name):
    return cls(reason, index=index, name=name)


class PixelBudgetError(ValueError):
    """A batch whose images have more pixels in all than ``max_total_pixels``
    (decode_images), found from their headers before anything was decoded.

    ``total`` is the summed width * height of the readable images, ``limit``
    the budget and ``count`` the number of images counted.
    """

    def __init__(self, total, limit, count):
        self.total, self.limit, self.count = total, limit, count
        super().__init__(f"the {count} images have {total:,} pixels in all (width x height "
                         f"from their headers), over the limit of {limit:,} pixels for one "
                         f"batch (max_total_pixels): send fewer or smaller images")

    def __reduce__(self):
        return (type(self), (self.total, self.limit, self.count))


def _label(index, name):
    label = "image" if index is None else f"image {index}"
    if name is not None:
        label += f" ({name!r})" if index is not None else f" {name!r}"
    return label
