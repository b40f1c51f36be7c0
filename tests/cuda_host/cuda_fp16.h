// Empty: shim.h gives what decodelab's kernels use of this header (tests/it/cuda_host.rs).
