"""The NumPy reference of every kernel, one module per op family.

Each module holds two versions of each op with the signatures of
cnn.backends: the plain name is vectorised NumPy (the ``python`` backend) and
the ``_naive`` name is the direct loop formula of the reference notes (the
``naive`` backend, for small shapes).
"""
