// graphopt's model runner for boards without Python: run a compiled model.so on .npz/.npy inputs.
//
//   ./run model.so inputs.npz outputs.npz [--repeat N]
//   ./run model.so input.npy output.npy        (one input, one output)
//
// Loads the library with the TVM runtime (libtvm_runtime.so + libtvm_ffi.so, found through the
// rpath $ORIGIN/lib), creates the Relax VM the way tvm.runtime.vm.VirtualMachine does
// (vm_load_executable, then vm_initialization(device type, id, allocator) for the device io.txt
// names: cpu, or cuda with inputs copied to the GPU and outputs back), calls
// "main" and writes the outputs. When io.txt sits next to model.so (graphopt writes it), inputs
// are matched by name and checked against the declared dtype and shape (a symbolic dim: its
// range, and one size per name across the inputs); outputs get the model's names. --repeat N runs N more times and prints the median wall time (meaningless under an
// emulator).
#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "npy.h"

#include <dlfcn.h>
#include <unistd.h>

namespace ffi = tvm::ffi;

namespace {

// One dim of a declared shape: static (lo == hi, no name) or symbolic (its name and range).
struct Dim {
  std::string name;
  int64_t lo = 0, hi = 0;
};

struct Decl {
  std::string name, descr;
  std::vector<Dim> shape;
};

struct IoSpec {
  std::vector<Decl> inputs, outputs;
  std::string device = "cpu";
};

// A dim token of io.txt: "224", or "seq=1..512" (a symbolic dim and its range), or "?" (an
// output's symbolic dim, not checked).
Dim ParseDim(const std::string& token) {
  Dim d;
  size_t eq = token.find('='), dots = token.find("..");
  if (eq == std::string::npos || dots == std::string::npos || dots < eq) {
    d.lo = d.hi = token == "?" ? -1 : std::stoll(token);
    return d;
  }
  d.name = token.substr(0, eq);
  d.lo = std::stoll(token.substr(eq + 1, dots - eq - 1));
  d.hi = std::stoll(token.substr(dots + 2));
  return d;
}

// io.txt lines: "device NAME" (the manifest's target device), then
// "input|output DESCR NDIM D0 .. Dn-1 NAME" (the name is the rest of the line).
IoSpec ReadIoSpec(const std::string& path) {
  IoSpec spec;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string kind;
    Decl d;
    size_t ndim;
    if (!(in >> kind)) continue;
    if (kind == "device") {
      in >> spec.device;
      continue;
    }
    if (!(in >> d.descr >> ndim)) continue;
    d.shape.resize(ndim);
    for (auto& x : d.shape) {
      std::string token;
      in >> token;
      x = ParseDim(token);
    }
    std::getline(in >> std::ws, d.name);
    (kind == "input" ? spec.inputs : spec.outputs).push_back(d);
  }
  return spec;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string ShapeText(const std::vector<Dim>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    const Dim& d = shape[i];
    s += (i ? ", " : "") + (d.name.empty() ? std::to_string(d.lo) : d.name);
  }
  return s + "]";
}

// What is wrong with an input's shape (empty: nothing); binds each symbolic dim's size in
// `sizes` (the first input that has it sets it, later ones must agree), as graphopt.load does.
std::string ShapeProblems(const Decl& d, const std::vector<int64_t>& have,
                          std::vector<std::pair<std::string, int64_t>>* sizes) {
  std::string wrong = "; input '" + d.name + "' has shape " + ShapeText(have) + ", expected " +
                      ShapeText(d.shape);
  if (have.size() != d.shape.size()) return wrong;
  std::string problems;
  for (size_t axis = 0; axis < have.size(); ++axis) {
    const Dim& dim = d.shape[axis];
    const std::string at = "; input '" + d.name + "' dim " + std::to_string(axis) + " (" +
                           dim.name + ") is " + std::to_string(have[axis]);
    if (dim.name.empty()) {
      if (have[axis] != dim.lo) return wrong;
    } else if (have[axis] < dim.lo || have[axis] > dim.hi) {
      problems += at + ", outside the range " + std::to_string(dim.lo) + ".." +
                  std::to_string(dim.hi) + " it was compiled for";
    } else {
      auto bound = std::find_if(sizes->begin(), sizes->end(),
                                [&](const auto& s) { return s.first == dim.name; });
      if (bound == sizes->end()) {
        sizes->emplace_back(dim.name, have[axis]);
      } else if (bound->second != have[axis]) {
        problems += at + ", but another input has " + dim.name + "=" + std::to_string(bound->second);
      }
    }
  }
  return problems;
}

DLDataType ToDLType(const std::string& descr) {
  int bytes = npy::ItemSize(descr);
  DLDataType t{0, static_cast<uint8_t>(bytes * 8), 1};
  switch (descr[1]) {
    case 'f': t.code = kDLFloat; break;
    case 'i': t.code = kDLInt; break;
    case 'u': t.code = kDLUInt; break;
    case 'b': t.code = kDLBool; break;
    default: throw npy::Error("unsupported dtype '" + descr + "'");
  }
  return t;
}

std::string ToDescr(DLDataType t) {
  const char* kind = t.code == kDLFloat ? "f" : t.code == kDLInt ? "i" : t.code == kDLUInt ? "u"
                     : t.code == kDLBool ? "b" : nullptr;
  if (kind == nullptr || t.lanes != 1) throw npy::Error("unsupported output dtype");
  return std::string(t.bits == 8 ? "|" : "<") + kind + std::to_string(t.bits / 8);
}

struct CpuAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes ? bytes : 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor ToTensor(const npy::Array& a) {
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::ShapeView(a.shape.data(), a.shape.size()),
                                           ToDLType(a.descr), DLDevice{kDLCPU, 0});
  std::copy(a.data.begin(), a.data.end(), static_cast<char*>(t.data_ptr()));
  return t;
}

void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.try_cast<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto items = value.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *items) Flatten(item, out);
  } else {
    throw npy::Error("model returned a value that is neither a tensor nor a tuple");
  }
}

npy::Array FromTensor(const ffi::Tensor& t, const std::string& name) {
  if (!t.IsContiguous()) throw npy::Error("output '" + name + "' is not contiguous");
  npy::Array a;
  a.name = name;
  a.descr = ToDescr(t.dtype());
  a.shape.assign(t.shape().begin(), t.shape().end());
  const char* begin = static_cast<const char*>(t.data_ptr()) + t.byte_offset();
  a.data.assign(begin, begin + ffi::GetDataSize(static_cast<size_t>(t.numel()), t.dtype()));
  return a;
}

// The device io.txt names: the CPU, or an NVIDIA GPU (inputs copied there, outputs back).
DLDeviceType DeviceType(const std::string& name) {
  if (name == "cpu") return kDLCPU;
  if (name == "cuda") return kDLCUDA;
  throw npy::Error("the artifact runs on device '" + name + "'; this runner serves cpu and cuda");
}

std::string ExeDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

// TVM's CUDA runtime is a separate library that registers the CUDA module loader when loaded;
// nothing links it, so it is opened here (with the CUDA runtime it needs, both in lib/).
void LoadDeviceRuntime(DLDeviceType type) {
  if (type != kDLCUDA) return;
  const std::string lib = ExeDir() + "/lib/";
  for (const char* name : {"libcudart.so.13", "libtvm_runtime_cuda.so"}) {
    std::string path = lib + name;
    if (std::string(name) == "libcudart.so.13" && access(path.c_str(), R_OK) != 0) continue;
    if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
      throw npy::Error(std::string("cannot load ") + path + ": " + dlerror());
    }
  }
}

ffi::Tensor CopyTo(const ffi::Tensor& src, DLDevice dev) {
  static ffi::Function alloc = ffi::Function::GetGlobal("runtime.TVMTensorAllocWithScope").value();
  static ffi::Function copy = ffi::Function::GetGlobal("runtime.TVMTensorCopyFromTo").value();
  ffi::Tensor dst = dev.device_type == kDLCPU
                        ? ffi::Tensor::FromNDAlloc(CpuAlloc(), src.shape(), src.dtype(), dev)
                        : alloc(ffi::Shape(src.shape()), src.dtype(), dev, ffi::Optional<ffi::String>())
                              .cast<ffi::Tensor>();
  copy(src, dst);
  return dst;
}

// Kernels run asynchronously on a GPU: wait for them before reading a clock.
void Sync(DLDevice dev) {
  if (dev.device_type == kDLCPU) return;
  static ffi::Function sync = ffi::Function::GetGlobal("runtime.Device_StreamSync").value();
  sync(dev, static_cast<void*>(nullptr));
}

bool EndsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Inputs in the model's order, checked against io.txt when there is one.
std::vector<npy::Array> LoadInputs(const std::string& path, const IoSpec& spec) {
  std::vector<npy::Array> given;
  if (EndsWith(path, ".npy")) {
    given.push_back(npy::ReadNpy(path, spec.inputs.size() == 1 ? spec.inputs[0].name : "input"));
  } else {
    given = npy::ReadNpz(path);
  }
  if (spec.inputs.empty()) return given;
  if (EndsWith(path, ".npy") && spec.inputs.size() != 1) {
    throw npy::Error("the model has " + std::to_string(spec.inputs.size()) +
                     " inputs: pass them in one .npz");
  }
  std::vector<npy::Array> ordered;
  std::vector<std::pair<std::string, int64_t>> sizes;
  std::string problems;
  for (const Decl& d : spec.inputs) {
    auto it = std::find_if(given.begin(), given.end(), [&](const npy::Array& a) { return a.name == d.name; });
    if (it == given.end()) {
      problems += "; missing input '" + d.name + "' " + d.descr + ShapeText(d.shape);
      continue;
    }
    if (it->descr != d.descr) {
      problems += "; input '" + d.name + "' has dtype " + it->descr + ", expected " + d.descr;
    }
    problems += ShapeProblems(d, it->shape, &sizes);
    ordered.push_back(*it);
  }
  if (!problems.empty()) throw npy::Error(problems.substr(2));
  return ordered;
}

// TVM's idle workers spin 300000 sched_yield calls after every parallel kernel: a core burnt
// for 0.1-0.3 s after each inference. Like graphopt.load (graphopt/env.py), bound the spin to
// GRAPHOPT_SPIN_US (default 200 us), counted in yields of about 0.4 us each on an idle core; a
// TVM_THREAD_POOL_SPIN_COUNT the user set wins. Must run before the first call starts TVM's
// thread pool.
void BoundWorkerSpin() {
  if (std::getenv("TVM_THREAD_POOL_SPIN_COUNT") != nullptr) return;
  const char* given = std::getenv("GRAPHOPT_SPIN_US");
  const double spin_us = given != nullptr ? std::atof(given) : 200.0, yield_us = 0.4;
  const long count = spin_us > 0 ? std::max(1L, std::lround(spin_us / yield_us)) : 0;
  setenv("TVM_THREAD_POOL_SPIN_COUNT", std::to_string(count).c_str(), 0);
}

int Usage() {
  std::cerr << "usage: run MODEL.so INPUTS.npz|.npy OUTPUTS.npz|.npy [--repeat N]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 && !(argc == 6 && std::string(argv[4]) == "--repeat")) return Usage();
  std::string model = argv[1], in_path = argv[2], out_path = argv[3];
  int repeat = argc == 6 ? std::atoi(argv[5]) : 0;
  BoundWorkerSpin();
  try {
    std::string dir = model.find('/') == std::string::npos ? "." : model.substr(0, model.rfind('/'));
    IoSpec spec = ReadIoSpec(dir + "/io.txt");
    std::vector<npy::Array> inputs = LoadInputs(in_path, spec);

    const DLDevice dev{DeviceType(spec.device), 0};
    LoadDeviceRuntime(dev.device_type);
    // dlopen searches the library path for a bare name: "model.so" means ./model.so here.
    ffi::Module lib = ffi::Module::LoadFromFile(model.find('/') == std::string::npos ? "./" + model : model);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    const int kPooledAllocator = 2;
    vm->GetFunction("vm_initialization").value()(static_cast<int>(dev.device_type), 0,
                                                 kPooledAllocator);
    ffi::Function main_fn = vm->GetFunction("main").value();

    std::vector<ffi::Any> args;
    for (const npy::Array& a : inputs) {
      ffi::Tensor host = ToTensor(a);
      args.emplace_back(dev.device_type == kDLCPU ? host : CopyTo(host, dev));
    }
    std::vector<ffi::AnyView> views(args.begin(), args.end());
    auto call = [&]() {
      ffi::Any result;
      main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
      return result;
    };
    std::vector<ffi::Tensor> tensors;
    Flatten(call(), &tensors);

    if (repeat > 0) {
      std::vector<double> ms;
      for (int i = 0; i < repeat; ++i) {
        Sync(dev);
        auto t0 = std::chrono::steady_clock::now();
        call();
        Sync(dev);
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(ms.begin(), ms.end());
      std::fprintf(stderr, "median %.3f ms over %d runs\n", ms[ms.size() / 2], repeat);
    }

    std::vector<npy::Array> outputs;
    for (size_t i = 0; i < tensors.size(); ++i) {
      std::string name = i < spec.outputs.size() ? spec.outputs[i].name : "output_" + std::to_string(i);
      const ffi::Tensor& t = tensors[i];
      outputs.push_back(FromTensor(t.device().device_type == kDLCPU ? t : CopyTo(t, DLDevice{kDLCPU, 0}), name));
    }
    if (EndsWith(out_path, ".npy")) {
      if (outputs.size() != 1) {
        throw npy::Error("the model has " + std::to_string(outputs.size()) + " outputs: write a .npz");
      }
      npy::WriteNpy(out_path, outputs[0]);
    } else {
      npy::WriteNpz(out_path, outputs);
    }
  } catch (const std::exception& err) {
    std::cerr << "error: " << err.what() << "\n";
    return 1;
  }
  return 0;
}
