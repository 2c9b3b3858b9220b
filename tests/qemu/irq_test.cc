// In-VM tests of the interrupt path: the per-CPU timer, MSI allocation, devices completing by
// interrupt (edu by MSI, virtio-blk by MSI-X) with their mappings unmapped in the handler, and a
// timer handler that maps and unmaps bounced buffers while the interrupted thread hammers the
// same bounce pool.
//
// kernel_main has the controller up, interrupts unmasked on the boot CPU and its timer running
// (arch::kDefaultTimerPeriodNs, counting only) before any test runs.
#include "dmakit/support/spinlock.h"
#include "drivers/edu/edu_device.h"
#include "drivers/virtio/virtio_blk.h"
#include "testkernel/arch.h"
#include "testkernel/devices.h"
#include "testkernel/iommu.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::Pages;

using ktest_util::check_disk;
using ktest_util::devices;
using ktest_util::fill_guest;

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr uint64_t kPage = ktest_util::kPage;
constexpr uint64_t kSecond = 1'000'000'000;

// Waits (interrupts unmasked) until `*counter` reaches `target` or `max_ns` pass.
template <typename T>
bool wait_until(const volatile T* counter, T target, uint64_t max_ns) {
  const uint64_t start = arch::now_ns();
  while (*counter < target) {
    if (arch::now_ns() - start > max_ns) return false;
    arch::irq_wait();
  }
  return true;
}

// Puts the boot CPU's timer back as kernel_main left it, whatever the test did.
struct RestoreDefaultTimer {
  ~RestoreDefaultTimer() {
    (void)arch::timer_start_this_cpu(arch::kDefaultTimerPeriodNs, nullptr, nullptr);
  }
};

size_t used_slots(const BouncePool* p) {
  return static_cast<size_t>(p->stats().used_slots);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Timer

KTEST(irq_timer_ticks_arrive_on_the_boot_cpu) {
  KEXPECT_TRUE(arch::irq_enabled_local());
  // All interrupts before ticks, at the start and (below) the other way round at the end: then
  // every tick counted is also in the interrupt count, whenever the timer fires in between.
  const uint64_t n0 = arch::irq_count();
  const uint64_t t0 = arch::timer_ticks_this_cpu();
  const uint64_t start = arch::now_ns();
  while (arch::timer_ticks_this_cpu() < t0 + 20 && arch::now_ns() - start < 2 * kSecond) {
    arch::irq_wait();
  }
  const uint64_t ticks = arch::timer_ticks_this_cpu() - t0;
  const uint64_t elapsed = arch::now_ns() - start;
  KEXPECT_GE(ticks, 20u);
  KEXPECT_GE(arch::irq_count() - n0, ticks);
  // 20 ticks of 1 ms cannot take less than 19 ms (a timer much faster than asked would).
  KEXPECT_GE(elapsed, 19 * arch::kDefaultTimerPeriodNs);
}

namespace {
struct TickProbe {
  uint64_t calls = 0;
  uint64_t calls_with_irqs_on = 0;
};
void probe_tick(void* ctx) {
  auto* p = static_cast<TickProbe*>(ctx);
  ++p->calls;
  if (arch::irq_enabled_local()) ++p->calls_with_irqs_on;
}
}  // namespace

KTEST(irq_timer_runs_its_tick_function_with_interrupts_masked_until_replaced) {
  RestoreDefaultTimer restore;
  KEXPECT_ERR(arch::timer_start_this_cpu(1000, nullptr, nullptr), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(arch::timer_start_this_cpu(5 * kSecond, nullptr, nullptr),
              ErrorCode::kInvalidArgument);
  static TickProbe probe;
  probe = TickProbe{};
  KREQUIRE_OK(arch::timer_start_this_cpu(500'000, &probe_tick, &probe));
  KEXPECT_TRUE(wait_until<uint64_t>(&probe.calls, 10, 2 * kSecond));
  KEXPECT_EQ(probe.calls_with_irqs_on, 0u);
  // Back to counting only: the probe is no longer called, the ticks still come.
  KREQUIRE_OK(arch::timer_start_this_cpu(arch::kDefaultTimerPeriodNs, nullptr, nullptr));
  const uint64_t calls = __atomic_load_n(&probe.calls, __ATOMIC_RELAXED);
  const uint64_t t0 = arch::timer_ticks_this_cpu();
  const uint64_t start = arch::now_ns();
  while (arch::timer_ticks_this_cpu() < t0 + 5 && arch::now_ns() - start < 2 * kSecond) {
    arch::irq_wait();
  }
  KEXPECT_GE(arch::timer_ticks_this_cpu(), t0 + 5);
  KEXPECT_EQ(__atomic_load_n(&probe.calls, __ATOMIC_RELAXED), calls);
  // Stopped: no tick at all for several periods.
  arch::timer_stop_this_cpu();
  const uint64_t t1 = arch::timer_ticks_this_cpu();
  const uint64_t s1 = arch::now_ns();
  while (arch::now_ns() - s1 < 10 * arch::kDefaultTimerPeriodNs) arch::irq_wait();
  // One tick may have been pending when the timer stopped.
  KEXPECT_LE(arch::timer_ticks_this_cpu(), t1 + 1);
}

// ---------------------------------------------------------------------------------------------
// MSI allocation

namespace {
void never_called(void*) {}
}  // namespace

KTEST(irq_msi_alloc_checks_arguments_and_runs_out_cleanly) {
  KEXPECT_ERR(arch::msi_alloc(nullptr, nullptr, 0, 0), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(arch::msi_alloc(&never_called, nullptr, 1000, 0), ErrorCode::kInvalidArgument);
  KEXPECT_ERR(arch::msi_free(arch::MsiMessage{}), ErrorCode::kNotFound);
  // Take every message there is: all distinct, then exhaustion is an error, not a panic.
  constexpr size_t kMax = 512;
  static arch::MsiMessage got[kMax];
  size_t n = 0;
  ErrorCode last = ErrorCode::kOk;
  while (n < kMax) {
    auto r = arch::msi_alloc(&never_called, nullptr, 0, 0);
    if (!r.ok()) {
      last = r.code();
      break;
    }
    got[n++] = *r;
  }
  KEXPECT_GT(n, 8u);
  KEXPECT_LT(n, kMax);
  KEXPECT_EQ(last, ErrorCode::kNoMemory);
  size_t dup = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n; ++j) {
      if (got[i].address == got[j].address && got[i].data == got[j].data) ++dup;
    }
  }
  KEXPECT_EQ(dup, 0u);
  for (size_t i = 0; i < n; ++i) KEXPECT_OK(arch::msi_free(got[i]));
  KEXPECT_ERR(arch::msi_free(got[0]), ErrorCode::kNotFound);
  // Everything came back: as many again.
  size_t m = 0;
  while (m < n) {
    auto r = arch::msi_alloc(&never_called, nullptr, 0, 0);
    if (!r.ok()) break;
    got[m++] = *r;
  }
  KEXPECT_EQ(m, n);
  for (size_t i = 0; i < m; ++i) KEXPECT_OK(arch::msi_free(got[i]));
}

// ---------------------------------------------------------------------------------------------
// edu: DMA completion by MSI

namespace {

Result<void> bind_edu(EduDevice* edu, uint64_t mask) {
  Devices* d = devices();
  if (d == nullptr) return ErrorCode::kNotFound;
  const Devices::Edu* e = d->edu_with_mask(mask);
  if (e == nullptr) return ErrorCode::kNotFound;
  DeviceDma dma = d->device_dma(e->dev, e->dma_mask);
  dma.set_name(mask == kMask32 ? "edu-32bit-irq" : "edu-28bit-irq");
  return edu->init(e->dev, dma);
}

// Device round trip of `n` bytes by interrupt: src -> device -> dst, every byte checked.
void edu_round_trip(ktest::Context& ktest_ctx, EduDevice& edu, uint8_t* src, uint8_t* dst, size_t n,
                    uint32_t seed) {
  ktest_util::fill_pattern(src, n, seed);
  support::fill_bytes(dst, 0, n);
  KREQUIRE_OK(edu.copy_to_device(src, n));
  KREQUIRE_OK(edu.copy_from_device(dst, n));
  KEXPECT_EQ(ktest_util::check_pattern(dst, n, seed), n);
}

}  // namespace

KTEST_WHEN(irq_edu_dma_completes_by_msi_and_unmaps_in_the_handler, iommu::inactive) {
  const uint64_t masks[] = {kMask32, Devices::kEduDefaultMask};
  for (uint64_t mask : masks) {
    EduDevice edu;
    KREQUIRE_OK(bind_edu(&edu, mask));
    KREQUIRE_OK(edu.enable_interrupts(0));
    KEXPECT_TRUE(edu.interrupts_enabled());
    KEXPECT_ERR(edu.enable_interrupts(0), ErrorCode::kInvalidArgument);
    const KernelDmaOp::Stats s0 = kernel_env().dma->stats();
    const uint64_t irqs0 = arch::irq_count();
    // Buffers anywhere in RAM: above the mask they bounce (the 28-bit device's nearly always do),
    // so the handler's unmap is also the copy out of the bounce slot.
    Pages a(0);
    Pages b(0);
    KREQUIRE_TRUE(a.ok() && b.ok());
    if (mask == Devices::kEduDefaultMask && ktest_util::pool_named("dma28") == nullptr) {
      // No RAM and so no bounce pool below 256 MiB on this machine: refused before the device
      // is touched, no interrupt, nothing mapped.
      KEXPECT_ERR(edu.copy_to_device(a.va(), kPage), ErrorCode::kDmaMaskNotMatch);
      KEXPECT_EQ(edu.stats().started, 0u);
      KEXPECT_EQ(edu.stats().interrupts, 0u);
      KEXPECT_EQ(kernel_env().dma->stats().live_maps, s0.live_maps);
      continue;
    }
    edu_round_trip(ktest_ctx, edu, a.va(), b.va(), kPage, static_cast<uint32_t>(mask));
    // A part of the device buffer, at an offset, forced through a bounce slot.
    edu.dma().set_force_bounce(true);
    edu_round_trip(ktest_ctx, edu, a.va() + 256, b.va() + 512, 1000, 77);
    const EduDevice::Stats& st = edu.stats();
    KEXPECT_EQ(st.completed, 4u);
    KEXPECT_EQ(st.interrupts, 4u);
    KEXPECT_EQ(st.irq_unmaps, 4u);
    KEXPECT_GE(st.bounced, 2u);
    KEXPECT_GE(arch::irq_count() - irqs0, 4u);
    const KernelDmaOp::Stats s1 = kernel_env().dma->stats();
#if DMA_STATS  // KernelDmaOp::stats() counts only with DMA_STATS (0 in a release library).
    KEXPECT_EQ(s1.maps - s0.maps, 4u);
#endif
    KEXPECT_EQ(s1.live_maps, s0.live_maps);
    edu.disable_interrupts();
    KEXPECT_FALSE(edu.interrupts_enabled());
    // Polled again: the same device, no interrupt.
    edu.dma().set_force_bounce(false);
    edu_round_trip(ktest_ctx, edu, a.va(), b.va(), 512, 5);
    KEXPECT_EQ(edu.stats().interrupts, 4u);
    KEXPECT_EQ(edu.dma().check_no_mappings(), 0u);
  }
}

// ---------------------------------------------------------------------------------------------
// virtio-blk: requests completed by MSI-X

namespace {

Result<void> bind_blk_irq(VirtioBlk* blk) {
  Devices* d = devices();
  if (d == nullptr || d->virtio_blk() == nullptr) return ErrorCode::kNotFound;
  DeviceDma dma = d->device_dma(d->virtio_blk(), ~0ull);
  dma.set_name("virtio-blk-irq");
  return blk->init(d->virtio_blk(), dma, VirtioBlk::Completion::kInterrupt, 0);
}

}  // namespace

KTEST(irq_virtio_blk_requests_complete_by_msix_and_unmap_in_the_handler) {
  VirtioBlk blk;
  KREQUIRE_OK(bind_blk_irq(&blk));
  KEXPECT_EQ(blk.completion(), VirtioBlk::Completion::kInterrupt);
  const KernelDmaOp::Stats s0 = kernel_env().dma->stats();
  // Host pattern from two pages that are not neighbours.
  Pages block(2);
  KREQUIRE_TRUE(block.ok());
  uint8_t* p0 = block.va();
  uint8_t* p2 = block.va() + 2 * kPage;
  support::fill_bytes(block.va(), 0, block.bytes());
  SgEntry e[] = {{p0, kPage}, {p2, kPage}};
  KREQUIRE_OK(blk.read(0, e));
  KEXPECT_EQ(check_disk(p0, kPage, 0, false), kPage);
  KEXPECT_EQ(check_disk(p2, kPage, kPage, false), kPage);
  KREQUIRE_OK(blk.read(900, support::Span<const SgEntry>(e, 1)));
  KEXPECT_EQ(check_disk(p0, kPage, 900 * disk_pattern::kSectorSize, false), kPage);

  // The guest pattern into the scatter-gather test's sectors (the same bytes it writes), through
  // bounce slots, and back.
  const uint64_t first = disk_pattern::kTestSgFirst;
  const uint64_t pos = first * disk_pattern::kSectorSize;
  const size_t bytes = disk_pattern::kTestSgCount * disk_pattern::kSectorSize;
  blk.dma().set_force_bounce(true);
  Pages out(2);
  Pages in(2);
  KREQUIRE_TRUE(out.ok() && in.ok());
  fill_guest(out.va(), bytes, pos);
  support::fill_bytes(in.va(), 0, bytes);
  SgEntry we[] = {{out.va(), kPage}, {out.va() + kPage, bytes - kPage}};
  KREQUIRE_OK(blk.write(first, we));
  SgEntry re[] = {{in.va(), bytes}};
  KREQUIRE_OK(blk.read(first, re));
  KEXPECT_EQ(check_disk(in.va(), bytes, pos, true), bytes);

  const uint64_t flags = arch::irq_save();
  const VirtioBlk::IrqStats st = blk.irq_stats();
  arch::irq_restore(flags);
  KEXPECT_EQ(st.completed, 4u);
  KEXPECT_GE(st.interrupts, 4u);
  KEXPECT_EQ(st.unknown, 0u);
  const KernelDmaOp::Stats s1 = kernel_env().dma->stats();
  KEXPECT_EQ(s1.live_maps, s0.live_maps);
#if DMA_STATS  // Counted only with DMA_STATS (0 in a release library).
  KEXPECT_GE(s1.bounced_maps - s0.bounced_maps, 3u);
#endif
  KEXPECT_EQ(blk.header_pool()->stats().blocks_in_use, 0u);
  if (!ktest_ctx.failed()) {
    kprintf("virtio-blk: guest pattern in sectors %llu..%llu\n",
            static_cast<unsigned long long>(first),
            static_cast<unsigned long long>(first + disk_pattern::kTestSgCount - 1));
  }
}

// ---------------------------------------------------------------------------------------------
// DMA calls from the timer interrupt, interrupting DMA calls on the same bounce pool

namespace {

constexpr size_t kHammerBytes = 512;
constexpr uint64_t kHammerPeriodNs = 1'000'000;

struct Hammer {
  DeviceDma* dma = nullptr;
  uint8_t* buf = nullptr;
  uint32_t seed = 0;
  uint64_t rounds = 0;
  uint64_t map_failures = 0;
  uint64_t bad_data = 0;
};

// One bounced round in each direction, every byte checked on both sides of the slot.
void hammer_round(Hammer& h) {
  const uint32_t seed = h.seed++;
  ktest_util::fill_pattern(h.buf, kHammerBytes, seed);
  {
    auto m = h.dma->map(h.buf, kHammerBytes, DmaDirection::kToDevice);
    if (!m.ok()) {
      ++h.map_failures;
      return;
    }
    if (!m->bounced() || ktest_util::check_pattern(ktest_util::device_view(m->dma_addr()),
                                                   kHammerBytes, seed) != kHammerBytes) {
      ++h.bad_data;
    }
  }
  {
    auto m = h.dma->map(h.buf, kHammerBytes, DmaDirection::kFromDevice);
    if (!m.ok()) {
      ++h.map_failures;
      return;
    }
    ktest_util::device_write_pattern(m->dma_addr(), kHammerBytes, seed + 0x10000);
    m->unmap();
    if (ktest_util::check_pattern(h.buf, kHammerBytes, seed + 0x10000) != kHammerBytes) {
      ++h.bad_data;
    }
  }
  ++h.rounds;
}

void hammer_tick(void* ctx) {
  hammer_round(*static_cast<Hammer*>(ctx));
}

}  // namespace

// The deadlock case: the timer interrupt lands in the middle of the thread's bounced map
// or unmap (inside the pool's lock or its per-CPU cache) and itself maps and unmaps through the
// same pool. Safe only when the library's locks and per-CPU caches mask interrupts through the
// kernel's irq_save/irq_restore hooks (kernel_main installs them).
KTEST(irq_timer_handler_dma_while_the_thread_hammers_the_same_bounce_pool) {
  // A library whose locks leave interrupts alone deadlocks below (the handler spins on the lock
  // its own CPU holds) and would stop the whole run: that is reported here instead.
  {
    support::SpinLock probe;
    probe.lock();
    const bool masked = !arch::irq_enabled_local();
    probe.unlock();
    KREQUIRE_TRUE(masked && "the library's spinlock does not mask interrupts (irq_save hook)");
  }
  RestoreDefaultTimer restore;
  BouncePool* pool = ktest_util::pool_named("dma32");
  KREQUIRE_TRUE(pool != nullptr);
  Pages thread_buf(0);
  Pages irq_buf(0);
  KREQUIRE_TRUE(thread_buf.ok() && irq_buf.ok());
  DeviceDma thread_dma(kernel_env().dma, kMask32);
  thread_dma.set_name("hammer-thread");
  thread_dma.set_force_bounce(true);
  DeviceDma irq_dma(kernel_env().dma, kMask32);
  irq_dma.set_name("hammer-irq");
  irq_dma.set_force_bounce(true);
  const size_t used0 = used_slots(pool);
  const uint64_t live0 = kernel_env().dma->stats().live_maps;

  static Hammer in_irq;
  in_irq = Hammer{};
  in_irq.dma = &irq_dma;
  in_irq.buf = irq_buf.va();
  in_irq.seed = 1'000'000;
  Hammer in_thread;
  in_thread.dma = &thread_dma;
  in_thread.buf = thread_buf.va();

  KREQUIRE_OK(arch::timer_start_this_cpu(kHammerPeriodNs, &hammer_tick, &in_irq));
  const uint64_t start = arch::now_ns();
  while (arch::now_ns() - start < kSecond / 2 || in_irq.rounds < 200) {
    if (arch::now_ns() - start > 10 * kSecond) break;
    hammer_round(in_thread);
  }
  arch::timer_stop_this_cpu();
  kprintf("  hammer: %llu thread rounds, %llu timer-interrupt rounds\n",
          static_cast<unsigned long long>(in_thread.rounds),
          static_cast<unsigned long long>(in_irq.rounds));
  KEXPECT_GE(in_irq.rounds, 200u);
  KEXPECT_GT(in_thread.rounds, in_irq.rounds);
  KEXPECT_EQ(in_thread.map_failures + in_irq.map_failures, 0u);
  KEXPECT_EQ(in_thread.bad_data, 0u);
  KEXPECT_EQ(in_irq.bad_data, 0u);
  KEXPECT_EQ(used_slots(pool), used0);
  KEXPECT_EQ(kernel_env().dma->stats().live_maps, live0);
  KEXPECT_EQ(thread_dma.check_no_mappings() + irq_dma.check_no_mappings(), 0u);
}
