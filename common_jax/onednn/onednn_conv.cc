// 2-D convolutions through oneDNN, as XLA FFI custom calls for the CPU platform.
//
// Three handlers, one per part of a convolution's training:
//   OnednnConvForward          y  = conv(x, w)       args (x, w)   -> y
//   OnednnConvBackwardData     dx = input gradient   args (dy, w)  -> dx
//   OnednnConvBackwardWeights  dw = kernel gradient  args (x, dy)  -> dw
// Activations are NHWC and kernels HWIO (flax's layouts), float32 or bfloat16, all three of one
// dtype. The result's shape is XLA's (the output buffer), so rows that XLA's floor division
// leaves unread need no special case. Attributes: strides, padding_lo, padding_hi (2 each,
// >= 0), dilation (2, XLA's convention: 1 = none) and threads (oneDNN's OpenMP threads for
// this call; 0 leaves OpenMP's default).
//
// Leading dimensions before the four of each operand come from jax.vmap (ffi_call's
// "expand_dims": an unbatched operand has size 1 there) and broadcast against each other.
// When only the activations carry them, they fold into the batch (one call); otherwise the
// convolution runs once per index, e.g. per member of a vmapped population.
//
// oneDNN reads and writes the NHWC activations where XLA keeps them; only the kernel is
// reordered to (or from) the blocked layout oneDNN's kernels choose, in per-thread scratch
// memory. Building a primitive JIT-compiles code (milliseconds), so primitives are built once
// per geometry and thread count and kept for the life of the process.

#include <omp.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// ---------------------------------------------------------------------------------------------
// Primitives, built once per geometry and thread count

// Everything a primitive depends on: part, dtype, threads, the three shapes and the window.
// (oneDNN splits a primitive's work for the thread count it is built with.)
using Key = std::array<int64_t, 23>;

struct Geometry {
  Kind kind;
  dt type;
  int64_t threads;
  dims src, weights, dst;  // (N, C, H, W), oneDNN's logical order; (O, I, H, W) for weights
  dims strides, pad_lo, pad_hi, dilation;  // dilation in oneDNN's convention (0 = none)

  Key key() const {
    Key k{kind, static_cast<int64_t>(type), threads};
    int i = 3;
    for (const dims* d : {&src, &weights, &dst, &strides, &pad_lo, &pad_hi, &dilation}) {
      for (int64_t v : *d) k[i++] = v;
    }
    return k;
  }
};

struct Plan {
  dnnl::primitive conv;
  dnnl::memory::desc src, weights, dst;  // as the primitive takes them
  dnnl::memory::desc user_weights;       // HWIO
  bool reorder = false;                  // the primitive's weights layout is not HWIO
  dnnl::primitive weights_reorder;       // HWIO -> blocked (forward, backward data) or back
  size_t conv_scratch = 0, reorder_scratch = 0;
};

dnnl::primitive_attr UserScratch() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // from `Scratch` below
  return attr;
}

std::shared_ptr<const Plan> BuildPlan(const Geometry& g) {
  auto& engine = Engine();
  auto plan = std::make_shared<Plan>();
  plan->src = dnnl::memory::desc(g.src, g.type, tag::nhwc);
  plan->dst = dnnl::memory::desc(g.dst, g.type, tag::nhwc);
  plan->user_weights = dnnl::memory::desc(g.weights, g.type, tag::hwio);
  // The kernel's layout is left to oneDNN: its fast kernels want a blocked one.
  const dnnl::memory::desc any_weights(g.weights, g.type, tag::any);
  const auto attr = UserScratch();
  const auto algo = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc forward(
      engine, dnnl::prop_kind::forward_training, algo, plan->src, any_weights, plan->dst,
      g.strides, g.dilation, g.pad_lo, g.pad_hi, attr);
  if (g.kind == kForward) {
    plan->conv = dnnl::convolution_forward(forward);
    plan->weights = forward.weights_desc();
    plan->conv_scratch = forward.scratchpad_desc().get_size();
  } else if (g.kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        engine, algo, plan->src, any_weights, plan->dst, g.strides, g.dilation, g.pad_lo,
        g.pad_hi, forward, attr);
    plan->conv = dnnl::convolution_backward_data(pd);
    plan->weights = pd.weights_desc();
    plan->conv_scratch = pd.scratchpad_desc().get_size();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        engine, algo, plan->src, any_weights, plan->dst, g.strides, g.dilation, g.pad_lo,
        g.pad_hi, forward, attr);
    plan->conv = dnnl::convolution_backward_weights(pd);
    plan->weights = pd.diff_weights_desc();
    plan->conv_scratch = pd.scratchpad_desc().get_size();
  }
  plan->reorder = plan->weights != plan->user_weights;
  if (plan->reorder) {
    const bool to_user = g.kind == kBackwardWeights;
    dnnl::reorder::primitive_desc pd(engine, to_user ? plan->weights : plan->user_weights,
                                     engine, to_user ? plan->user_weights : plan->weights, attr);
    plan->weights_reorder = dnnl::reorder(pd);
    plan->reorder_scratch = pd.scratchpad_desc().get_size();
  }
  return plan;
}

std::shared_ptr<const Plan> GetPlan(const Geometry& g) {
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<const Plan>> cache;
  const Key key = g.key();
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto plan = BuildPlan(g);  // outside the lock: other geometries need not wait
  std::lock_guard<std::mutex> lock(mutex);
  return cache.emplace(key, std::move(plan)).first->second;
}

// ---------------------------------------------------------------------------------------------
// Running one

// Per-thread scratch memory, grown as needed and kept: XLA's FFI scratch allocator has no
// memory to give on the CPU platform, and fresh allocations every call would fault pages in.
class Scratch {
 public:
  // Room for `sizes` (bytes each), 64-byte aligned, valid until the next call on this thread;
  // nullptr for a size of 0, and all nullptr when out of memory.
  std::array<void*, 3> Take(const std::array<size_t, 3>& sizes) {
    std::array<size_t, 3> offsets;
    size_t total = 0;
    for (int i = 0; i < 3; ++i) {
      offsets[i] = total;
      total += (sizes[i] + 63) / 64 * 64;
    }
    if (total > capacity_) {
      buffer_.reset(static_cast<char*>(std::aligned_alloc(64, total)));
      capacity_ = buffer_ ? total : 0;
    }
    std::array<void*, 3> out{};
    for (int i = 0; i < 3; ++i) {
      if (sizes[i] && buffer_) out[i] = buffer_.get() + offsets[i];
    }
    return out;
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> buffer_;
  size_t capacity_ = 0;
};

// Passes a primitive its scratchpad of `bytes` at `ptr`, when it asked for one.
void AddScratch(std::unordered_map<int, dnnl::memory>& args, size_t bytes, void* ptr) {
  if (bytes == 0) return;
  const dnnl::memory::desc desc({static_cast<int64_t>(bytes)}, dt::u8, tag::x);
  args.insert({DNNL_ARG_SCRATCHPAD, dnnl::memory(desc, Engine(), ptr)});
}

// One convolution part on one set of pointers (no vmap dimensions left).
void Execute(const Plan& plan, Kind kind, void* src, void* weights, void* dst) {
  auto& engine = Engine();
  dnnl::stream stream(engine);
  thread_local Scratch scratch;
  const size_t blocked_bytes = plan.reorder ? plan.weights.get_size() : 0;
  const auto room = scratch.Take({plan.conv_scratch, plan.reorder_scratch, blocked_bytes});
  if ((plan.conv_scratch && !room[0]) || (plan.reorder_scratch && !room[1]) ||
      (blocked_bytes && !room[2])) {
    throw std::bad_alloc();
  }
  dnnl::memory user_weights(plan.user_weights, engine, weights);
  dnnl::memory conv_weights(plan.weights, engine, plan.reorder ? room[2] : weights);
  auto reorder = [&](const dnnl::memory& from, const dnnl::memory& to) {
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    AddScratch(args, plan.reorder_scratch, room[1]);
    plan.weights_reorder.execute(stream, args);
  };
  if (plan.reorder && kind != kBackwardWeights) reorder(user_weights, conv_weights);
  std::unordered_map<int, dnnl::memory> args{
      {kind == kForward ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST,
       dnnl::memory(plan.dst, engine, dst)},
      {kind == kBackwardData ? DNNL_ARG_DIFF_SRC : DNNL_ARG_SRC,
       dnnl::memory(plan.src, engine, src)},
      {kind == kBackwardWeights ? DNNL_ARG_DIFF_WEIGHTS : DNNL_ARG_WEIGHTS, conv_weights}};
  AddScratch(args, plan.conv_scratch, room[0]);
  plan.conv.execute(stream, args);
  if (plan.reorder && kind == kBackwardWeights) reorder(conv_weights, user_weights);
  stream.wait();
}

// NHWC -> oneDNN's logical (N, C, H, W); HWIO -> (O, I, H, W). `batch` scales N.
dims Activation(const int64_t* d, int64_t batch) { return {d[0] * batch, d[3], d[1], d[2]}; }
dims Kernel(const int64_t* d) { return {d[3], d[2], d[0], d[1]}; }

struct Operand {
  char* data;
  std::vector<int64_t> lead;  // vmap dimensions
  const int64_t* conv;        // the 4 convolution dimensions
  size_t bytes;               // of one convolution's operand
};

Operand Describe(ffi::AnyBuffer buffer) {
  const auto d = buffer.dimensions();
  const size_t rank = d.size();
  Operand op{static_cast<char*>(buffer.untyped_data()),
             std::vector<int64_t>(d.begin(), d.begin() + (rank - 4)), d.begin() + (rank - 4),
             ffi::ByteWidth(buffer.element_type())};
  for (int i = 0; i < 4; ++i) op.bytes *= op.conv[i];
  return op;
}

bool AllOnes(const std::vector<int64_t>& lead) {
  for (int64_t v : lead) {
    if (v != 1) return false;
  }
  return true;
}

int64_t Product(const std::vector<int64_t>& lead) {
  int64_t n = 1;
  for (int64_t v : lead) n *= v;
  return n;
}

// Offset (in operand-sized steps) of `op` at flat index `i` of the output's vmap dimensions,
// broadcasting the operand's size-1 dimensions.
int64_t BroadcastOffset(const Operand& op, const std::vector<int64_t>& out_lead, int64_t i) {
  int64_t offset = 0, stride = 1;
  for (size_t k = out_lead.size(); k-- > 0;) {
    const int64_t index = i % out_lead[k];
    i /= out_lead[k];
    if (op.lead[k] != 1) offset += index * stride;
    stride *= op.lead[k];
  }
  return offset;
}

// a, b: the two inputs; out: the result. Their roles depend on `kind` (see the top).
// Sets this thread's OpenMP team size for the lifetime of the object, then restores it.
class ThreadCount {
 public:
  explicit ThreadCount(int64_t threads) : previous_(omp_get_max_threads()) {
    omp_set_num_threads(static_cast<int>(threads));
  }
  ~ThreadCount() { omp_set_num_threads(previous_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  const int previous_;
};

ffi::Error Run(Kind kind, ffi::AnyBuffer a_buffer, ffi::AnyBuffer b_buffer,
               ffi::AnyBuffer out_buffer, ffi::Span<const int64_t> strides,
               ffi::Span<const int64_t> padding_lo, ffi::Span<const int64_t> padding_hi,
               ffi::Span<const int64_t> dilation, int64_t threads) {
  const auto type = a_buffer.element_type();
  if (type != b_buffer.element_type() || type != out_buffer.element_type()) {
    return ffi::Error::InvalidArgument("onednn conv: operands of different dtypes");
  }
  if (type != ffi::DataType::F32 && type != ffi::DataType::BF16) {
    return ffi::Error::InvalidArgument("onednn conv: only float32 and bfloat16");
  }
  const size_t rank = out_buffer.dimensions().size();
  if (rank < 4 || a_buffer.dimensions().size() != rank ||
      b_buffer.dimensions().size() != rank || strides.size() != 2 || padding_lo.size() != 2 ||
      padding_hi.size() != 2 || dilation.size() != 2) {
    return ffi::Error::InvalidArgument("onednn conv: 2-D convolutions of rank-4 operands");
  }
  const Operand a = Describe(a_buffer), b = Describe(b_buffer), out = Describe(out_buffer);
  for (size_t k = 0; k < out.lead.size(); ++k) {
    for (const Operand* op : {&a, &b}) {
      if (op->lead[k] != 1 && op->lead[k] != out.lead[k]) {
        return ffi::Error::InvalidArgument("onednn conv: vmap dimensions do not broadcast");
      }
    }
  }
  if (a_buffer.element_count() == 0 || b_buffer.element_count() == 0) {
    // An empty batch or channel: nothing to read, and a kernel gradient of zero.
    std::memset(out.data, 0, out_buffer.size_bytes());
    return ffi::Error::Success();
  }
  if (out_buffer.element_count() == 0) return ffi::Error::Success();

  // Roles: which operand is the activation (src), the kernel and the output side (dst).
  const Operand& src = kind == kBackwardData ? out : a;
  const Operand& weights = kind == kBackwardWeights ? out : b;
  const Operand& dst = kind == kForward ? out : (kind == kBackwardData ? a : b);
  const Operand& kernel_input = kind == kBackwardWeights ? a : b;  // a weights-free input
  // vmapped activations against one kernel: the vmap dimensions join the batch.
  const bool fold = kind != kBackwardWeights && AllOnes(kernel_input.lead) &&
                    a.lead == out.lead;
  const int64_t folded = fold ? Product(out.lead) : 1;

  Geometry g;
  g.kind = kind;
  g.type = type == ffi::DataType::F32 ? dt::f32 : dt::bf16;
  g.src = Activation(src.conv, folded);
  g.weights = Kernel(weights.conv);
  g.dst = Activation(dst.conv, folded);
  g.strides = {strides[0], strides[1]};
  g.pad_lo = {padding_lo[0], padding_lo[1]};
  g.pad_hi = {padding_hi[0], padding_hi[1]};
  g.dilation = {dilation[0] - 1, dilation[1] - 1};
  g.threads = threads > 0 ? threads : omp_get_max_threads();
  // The thread count is an ICV of the calling thread, which may be the Python thread, and a
  // PyTorch in the same process shares this libgomp: restore it on the way out, or PyTorch's
  // next parallel region on that thread would run with our count.
  const ThreadCount scoped(g.threads);
  try {
    const auto plan = GetPlan(g);
    const int64_t count = fold ? 1 : Product(out.lead);
    for (int64_t i = 0; i < count; ++i) {
      auto at = [&](const Operand& op) {
        return op.data + BroadcastOffset(op, out.lead, i) * op.bytes;
      };
      Execute(*plan, kind, at(src), at(weights), at(dst));
    }
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("onednn conv: out of memory");
  }
  return ffi::Error::Success();
}

template <Kind kind>
ffi::Error Handler(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding_lo,
                   ffi::Span<const int64_t> padding_hi, ffi::Span<const int64_t> dilation,
                   int64_t threads) {
  return Run(kind, a, b, *out, strides, padding_lo, padding_hi, dilation, threads);
}

}  // namespace

// The library is built with hidden visibility; these are its exports.
#define ONEDNN_EXPORT extern "C" __attribute__((visibility("default")))
ONEDNN_EXPORT XLA_FFI_Error* OnednnConvForward(XLA_FFI_CallFrame* call_frame);
ONEDNN_EXPORT XLA_FFI_Error* OnednnConvBackwardData(XLA_FFI_CallFrame* call_frame);
ONEDNN_EXPORT XLA_FFI_Error* OnednnConvBackwardWeights(XLA_FFI_CallFrame* call_frame);

#define ONEDNN_CONV_HANDLER(name, kind)                                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                          \
      name, Handler<kind>,                                                \
      ffi::Ffi::Bind()                                                    \
          .Arg<ffi::AnyBuffer>()                                          \
          .Arg<ffi::AnyBuffer>()                                          \
          .Ret<ffi::AnyBuffer>()                                          \
          .Attr<ffi::Span<const int64_t>>("strides")                      \
          .Attr<ffi::Span<const int64_t>>("padding_lo")                   \
          .Attr<ffi::Span<const int64_t>>("padding_hi")                   \
          .Attr<ffi::Span<const int64_t>>("dilation")                     \
          .Attr<int64_t>("threads"));

ONEDNN_CONV_HANDLER(OnednnConvForward, kForward)
ONEDNN_CONV_HANDLER(OnednnConvBackwardData, kBackwardData)
ONEDNN_CONV_HANDLER(OnednnConvBackwardWeights, kBackwardWeights)

// The oneDNN version the library runs with, for logs and benchmark records.
ONEDNN_EXPORT const char* OnednnVersion() {
  static const std::string version = [] {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
           std::to_string(v->patch);
  }();
  return version.c_str();
}
