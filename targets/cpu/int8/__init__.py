"""CPU int8 kernels for the int8 ops of `lower-int8` (vnni, avx2, sdot, generic schemes).

kernels.py: the schemes, the matmul / window-conv kernels and the add; conv_nchw.py: NCHW
convs; depthwise_nhwc.py: channel-last depthwise; quantize_nhwc.py: an RGB input quantized
into NHWC words; materialize.py: which kernel each op becomes and how its constants are packed
(used by `materialize-int8`).
"""
