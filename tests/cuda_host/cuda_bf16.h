// Empty: shim.h gives what decodelab's kernels use of this header (tests/cuda_host.rs).
