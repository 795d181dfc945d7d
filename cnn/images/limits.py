"""What the decoder accepts by default: formats, pixels per image and per batch."""

#: Pillow format names that may be parsed at all. JPEG files that Pillow reports
#: as "MPO" (multi-picture JPEGs written by many cameras) count as JPEG.
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM"})

#: Largest width * height of one image accepted by default, checked from the
#: header before any pixel is decoded. PNG, WebP, GIF, TIFF and BMP can only be
#: decoded at full size before they are reduced (libjpeg scales JPEG down while
#: decoding, but a progressive JPEG still buffers ~6 bytes of coefficients per
#: pixel), so this bounds the cost of one image. Measured per megapixel
#: (benchmarks/image_cost.py, Pillow 13, full decode): WebP 15.3 MiB and 13 ms
#: of CPU (libwebp decodes through two RGBA canvases), RGBA and 16-bit RGBA PNG
#: 3.8 MiB and 14 ms, progressive 4:4:4 JPEG 5.8 MiB and 13 ms, 16-bit grey PNG
#: 1.9 MiB and 7 ms, 8-bit grey or palette PNG and GIF 1 MiB and 3 ms.
#: 4096 x 3072 (12.6 M pixels: any 12-megapixel camera photo) keeps the worst of
#: them near 190 MiB and 0.3 s, within the service's target of 256 MiB and 1 s.
MAX_PIXELS = 4096 * 3072

#: Default budget of the service (CNN_MAX_REQUEST_PIXELS) for the summed
#: width * height of every image file in one request (``max_total_pixels`` of
#: decode_images, checked from the headers before anything is decoded). The
#: images are decoded one after another, so memory is bounded by MAX_PIXELS
#: and CPU by this: many mid-sized 16-bit RGBA PNGs, the slowest case measured,
#: take ~20 ms of CPU per megapixel (decode, reduction and conversion), so
#: 32 M pixels (2.5 images at MAX_PIXELS, or 256 of 353x353) take ~0.65 s.
MAX_TOTAL_PIXELS = 32_000_000
