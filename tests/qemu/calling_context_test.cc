// In-VM tests of the calling-context check (issue "Interrupts and SMP", bad input): a timer
// interrupt handler that calls alloc_coherent for a device that is not coherent (thread only: it
// would edit the direct map and wait for the other CPUs' TLBs from inside a handler) gets kBusy
// and one wrong-context report from the misuse checker, through the test kernel's in_interrupt
// hook; nothing is allocated or remapped. The same handler may still allocate for a coherent
// device (any context). Debug library only: a release library does not check, and the handler
// would then really run the page-table edit.
#include "dmakit/dma_debug.h"
#include "dmakit/kernel_hooks.h"
#include "testkernel/arch.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"
#include "testkernel/percpu.h"
#include "tests/qemu/ktest.h"

#if DMA_API_DEBUG_ENABLED

namespace {

constexpr uint64_t kSecond = 1'000'000'000;

// What the tick function saw and got, written in the handler and read by the test once `done`.
struct HandlerCall {
  DmaConstraints c;
  bool in_interrupt = false;
  bool hook_says_interrupt = false;
  ErrorCode code = ErrorCode::kOk;
  DmaHandle handle;  // What a successful allocation returned (freed by the test).
  int done = 0;
};

// The checker's report lines, captured from whatever context reports them.
struct Captured {
  char line[400] = {};
  unsigned lines = 0;
};
Captured g_captured;

void capture(void*, const char* line) {
  if (g_captured.lines++ != 0) return;
  size_t i = 0;
  for (; line[i] != '\0' && i + 1 < sizeof(g_captured.line); ++i) g_captured.line[i] = line[i];
  g_captured.line[i] = '\0';
}

void alloc_in_handler(void* ctx) {
  auto* call = static_cast<HandlerCall*>(ctx);
  if (__atomic_load_n(&call->done, __ATOMIC_ACQUIRE) != 0) return;
  call->in_interrupt = in_interrupt();
  call->hook_says_interrupt =
      dma::kernel_hooks().in_interrupt != nullptr && dma::kernel_hooks().in_interrupt() != 0;
  auto r = kernel_env().dma->alloc_coherent(call->c, Layout{4096, 4096});
  call->code = r.code();
  if (r.ok()) call->handle = *r;
  __atomic_store_n(&call->done, 1, __ATOMIC_RELEASE);
}

// Runs alloc_in_handler once from this CPU's timer interrupt, then puts the default timer back.
bool run_in_timer_interrupt(HandlerCall* call) {
  if (!arch::timer_start_this_cpu(500'000, &alloc_in_handler, call).ok()) return false;
  const uint64_t start = arch::now_ns();
  while (__atomic_load_n(&call->done, __ATOMIC_ACQUIRE) == 0 && arch::now_ns() - start < kSecond) {
    arch::irq_wait();
  }
  (void)arch::timer_start_this_cpu(arch::kDefaultTimerPeriodNs, nullptr, nullptr);
  return __atomic_load_n(&call->done, __ATOMIC_ACQUIRE) != 0;
}

// Installs the capturing sink for a test's lifetime.
struct CaptureSink {
  CaptureSink() {
    g_captured = Captured{};
    DmaDebug::set_sink(&capture, nullptr, &old_sink, &old_ctx);
  }
  ~CaptureSink() { DmaDebug::set_sink(old_sink, old_ctx); }
  DmaDebug::Sink old_sink = nullptr;
  void* old_ctx = nullptr;
};

}  // namespace

KTEST(context_noncoherent_alloc_coherent_in_a_timer_interrupt_is_refused_and_reported) {
  KEXPECT_TRUE(!in_interrupt());
  KREQUIRE_TRUE(dma::kernel_hooks().in_interrupt != nullptr);
  KEXPECT_EQ(dma::kernel_hooks().in_interrupt(), 0);
  const KernelEnv& env = kernel_env();
  const uint64_t free_before = env.pfa->free_pages();
  const KernelDmaOp::Stats before = env.dma->stats();
  const uint64_t reports_before = DmaDebug::count(DmaDebugKind::kWrongContext);

  static HandlerCall call;
  call = HandlerCall{};
  call.c = env.dma->default_constraints();
  call.c.coherence = DmaCoherence::kNonCoherent;
  call.c.name = "irq-test-nc";
  call.c.device_id = DmaDebug::new_device_id();
  {
    CaptureSink sink;
    KREQUIRE_TRUE(run_in_timer_interrupt(&call));
  }
  KEXPECT_TRUE(call.in_interrupt);
  KEXPECT_TRUE(call.hook_says_interrupt);
  KEXPECT_EQ(call.code, ErrorCode::kBusy);
  if (call.code == ErrorCode::kOk) env.dma->dealloc_coherent(call.handle);
  KEXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongContext), reports_before + 1);
  KEXPECT_EQ(g_captured.lines, 1u);
  kprintf("  report: %s\n", g_captured.line);
  KEXPECT_TRUE(
      kstr::starts_with(g_captured.line, "dma-debug: wrong-context: device 'irq-test-nc'"));
  KEXPECT_TRUE(kstr::contains(g_captured.line, "alloc_coherent called from an interrupt handler"));
  // Nothing allocated, nothing remapped.
  KEXPECT_EQ(env.pfa->free_pages(), free_before);
  KEXPECT_EQ(env.dma->stats().coherent_live, before.coherent_live);
  KEXPECT_EQ(env.dma->stats().coherent_uncached, before.coherent_uncached);

  // The same call from thread context succeeds, unreported.
  {
    CaptureSink sink;
    auto h = env.dma->alloc_coherent(call.c, Layout{4096, 4096});
    KEXPECT_TRUE(h.ok());
    if (h.ok()) env.dma->dealloc_coherent(*h);
    KEXPECT_EQ(g_captured.lines, 0u);
  }
  KEXPECT_EQ(env.pfa->free_pages(), free_before);
}

KTEST(context_coherent_alloc_coherent_in_a_timer_interrupt_is_allowed) {
  const KernelEnv& env = kernel_env();
  const uint64_t free_before = env.pfa->free_pages();
  const uint64_t reports_before = DmaDebug::total();
  static HandlerCall call;
  call = HandlerCall{};
  call.c = env.dma->default_constraints();
  call.c.coherence = DmaCoherence::kCoherent;
  call.c.name = "irq-test-coh";
  call.c.device_id = DmaDebug::new_device_id();
  {
    CaptureSink sink;
    KREQUIRE_TRUE(run_in_timer_interrupt(&call));
    KEXPECT_EQ(g_captured.lines, 0u);
  }
  KEXPECT_TRUE(call.in_interrupt);
  KEXPECT_EQ(call.code, ErrorCode::kOk);
  if (call.code == ErrorCode::kOk) env.dma->dealloc_coherent(call.handle);
  KEXPECT_EQ(DmaDebug::total(), reports_before);
  KEXPECT_EQ(env.pfa->free_pages(), free_before);
}

// Thread code with interrupts masked (under a kernel spinlock, say), not in a handler: with other
// CPUs online the test kernel's irqs_disabled hook says so, and alloc_coherent and
// dealloc_coherent for a non-coherent device are refused (their TLB shootdown may wait for IPIs)
// with one wrong-context report each; nothing is allocated, remapped or lost. While this CPU is
// the only one online the hook says 0 (nothing to wait for) and the calls go through.
KTEST(context_noncoherent_alloc_coherent_with_interrupts_masked_is_refused_and_reported) {
  KREQUIRE_TRUE(dma::kernel_hooks().irqs_disabled != nullptr);
  KEXPECT_TRUE(!in_interrupt());
  KEXPECT_TRUE(arch::irq_enabled_local());
  KEXPECT_EQ(dma::kernel_hooks().irqs_disabled(), 0);
  const KernelEnv& env = kernel_env();
  const uint64_t free_before = env.pfa->free_pages();
  const KernelDmaOp::Stats before = env.dma->stats();
  const uint64_t reports_before = DmaDebug::count(DmaDebugKind::kWrongContext);
  const bool checked = num_online_cpus() > 1;
  kprintf("  %u CPUs online: the call is %s\n", num_online_cpus(), checked ? "refused" : "allowed");

  DmaConstraints c = env.dma->default_constraints();
  c.coherence = DmaCoherence::kNonCoherent;
  c.name = "masked-nc";
  c.device_id = DmaDebug::new_device_id();
  // A live allocation to free with interrupts masked.
  auto live = env.dma->alloc_coherent(c, Layout{4096, 4096});
  KREQUIRE_OK(live);
  const uint64_t free_with_live = env.pfa->free_pages();

  int hook_masked = 0;
  ErrorCode code = ErrorCode::kOk;
  DmaHandle got;
  {
    CaptureSink sink;
    uintptr_t s = arch::irq_save();
    hook_masked = dma::kernel_hooks().irqs_disabled();
    auto r = env.dma->alloc_coherent(c, Layout{4096, 4096});
    code = r.code();
    if (r.ok()) got = *r;
    env.dma->dealloc_coherent(*live);
    arch::irq_restore(s);
    KEXPECT_EQ(g_captured.lines, checked ? 2u : 0u);
    if (checked) {
      kprintf("  report: %s\n", g_captured.line);
      KEXPECT_TRUE(
          kstr::starts_with(g_captured.line, "dma-debug: wrong-context: device 'masked-nc'"));
      KEXPECT_TRUE(
          kstr::contains(g_captured.line, "alloc_coherent called with interrupts disabled"));
    }
  }
  KEXPECT_EQ(hook_masked, checked ? 1 : 0);
  if (checked) {
    KEXPECT_EQ(code, ErrorCode::kBusy);
    KEXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongContext), reports_before + 2);
    // Nothing allocated; the live allocation stayed live (and uncached) and is freed now.
    KEXPECT_EQ(env.pfa->free_pages(), free_with_live);
    KEXPECT_EQ(env.dma->stats().coherent_live, before.coherent_live + 1);
    env.dma->dealloc_coherent(*live);
  } else {
    KEXPECT_EQ(code, ErrorCode::kOk);
    if (code == ErrorCode::kOk) env.dma->dealloc_coherent(got);
    KEXPECT_EQ(DmaDebug::count(DmaDebugKind::kWrongContext), reports_before);
  }
  KEXPECT_EQ(env.pfa->free_pages(), free_before);
  KEXPECT_EQ(env.dma->stats().coherent_live, before.coherent_live);
  KEXPECT_EQ(env.dma->stats().coherent_uncached_live, before.coherent_uncached_live);
  // Remapped uncached ever: `live` only, the refused request never.
  KEXPECT_EQ(env.dma->stats().coherent_uncached, before.coherent_uncached + (checked ? 1 : 2));
}

#endif  // DMA_API_DEBUG_ENABLED
