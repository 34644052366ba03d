/* Stand-in for the NVIDIA driver library (libcuda.so.1) on build machines without a GPU.
 *
 * TVM's CUDA runtime (libtvm_runtime_cuda.so) links against libcuda.so.1; without it that
 * library fails to load and TVM silently ships CUDA source instead of a fatbin. This stub
 * defines the driver symbols TVM links, each answering "no device", so the runtime loads and
 * the compiled fatbin is kept. Nothing here can run a kernel. graphopt compiles it with
 * `gcc -shared -fPIC -Wl,-soname,libcuda.so.1` into its cache on first use.
 */
#include <stddef.h>

typedef int CUresult;
#define CUDA_ERROR_NO_DEVICE 100

static const char kMessage[] = "no CUDA driver: graphopt's build-machine stub of libcuda.so.1";

CUresult cuGetErrorName(CUresult error, const char** out) {
  (void)error;
  if (out != NULL) *out = "CUDA_ERROR_NO_DEVICE";
  return 0;
}

CUresult cuGetErrorString(CUresult error, const char** out) {
  (void)error;
  if (out != NULL) *out = kMessage;
  return 0;
}

/* Everything else: no device. The arguments are not read, so one signature serves all. */
#define NO_DEVICE(name) \
  CUresult name(void) { return CUDA_ERROR_NO_DEVICE; }

NO_DEVICE(cuInit)
NO_DEVICE(cuDriverGetVersion)
NO_DEVICE(cuDeviceGet)
NO_DEVICE(cuDeviceGetCount)
NO_DEVICE(cuDeviceGetName)
NO_DEVICE(cuDeviceGetAttribute)
NO_DEVICE(cuFuncSetAttribute)
NO_DEVICE(cuLaunchKernel)
NO_DEVICE(cuLaunchKernelEx)
NO_DEVICE(cuModuleGetFunction)
NO_DEVICE(cuModuleGetGlobal)
NO_DEVICE(cuModuleLoadData)
NO_DEVICE(cuModuleUnload)
NO_DEVICE(cuTensorMapEncodeTiled)
NO_DEVICE(cuGetProcAddress)
