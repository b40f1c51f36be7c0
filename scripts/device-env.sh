# Sourced by the device scripts on a lent GPU machine: the Vulkan loader (if carried in .gl),
# NVRTC, the CUDA headers and nvdisasm (the toolkit, else PyTorch's nvidia wheels), NCCL.
if [ -d .gl ] && ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
nv="$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)"
for d in /usr/local/cuda/lib64 "$nv/cuda_nvrtc/lib"; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
for d in /usr/local/cuda/include "$nv/cuda_runtime/include"; do
    if [ -f "$d/cuda_fp8.h" ]; then export DECODELAB_CUDA_INCLUDE="$d"; break; fi
done
[ -x /usr/local/cuda/bin/nvdisasm ] && export DECODELAB_NVDISASM=/usr/local/cuda/bin/nvdisasm
# NCCL (cuda splits): the pip wheel ships libnccl.so.2; cudarc loads libnccl.so.
for d in "$nv/nccl/lib" /usr/lib/x86_64-linux-gnu; do
    if [ -f "$d/libnccl.so.2" ]; then
        mkdir -p /tmp/nccl-lib && ln -sf "$d/libnccl.so.2" /tmp/nccl-lib/libnccl.so
        export LD_LIBRARY_PATH="/tmp/nccl-lib:$d:${LD_LIBRARY_PATH:-}"
        break
    fi
done
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
