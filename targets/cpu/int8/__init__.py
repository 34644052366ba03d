"""int8 kernel generators for the CPU dot-product schemes (vnni, avx2, sdot, generic).

kernels.py: the matmul / window-conv kernels and the scheme table; conv_nchw.py: NCHW convs;
depthwise_nhwc.py: channel-last depthwise; quantize_nhwc.py: an RGB input quantized into NHWC
words; retarget.py: rebuild kernels recorded for one scheme for the target's scheme.
"""
