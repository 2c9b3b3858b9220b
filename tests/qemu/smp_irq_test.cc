// In-VM tests of interrupts on every CPU: each secondary has its own part of the interrupt
// controller set up and its own periodic timer running (testkernel/smp.cc's secondary_main), and
// a device's MSI can be steered to any online CPU, where its handler completes (and unmaps) the
// transfer the boot CPU started.
#include "drivers/edu/edu_device.h"
#include "testkernel/arch.h"
#include "testkernel/devices.h"
#include "testkernel/kernel_env.h"
#include "testkernel/percpu.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

using ktest_util::Pages;

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr uint64_t kPage = ktest_util::kPage;

void read_ticks(void* out) {
  static_cast<uint64_t*>(out)[cpu_index()] = arch::timer_ticks_this_cpu();
}

}  // namespace

KTEST(smp_irq_every_cpu_takes_its_own_timer_ticks) {
  uint64_t before[kMaxCpus] = {};
  uint64_t after[kMaxCpus] = {};
  run_on_all_cpus(&read_ticks, before);
  // 30 periods of the default timer; idle CPUs count their ticks while they wait.
  const uint64_t start = arch::now_ns();
  while (arch::now_ns() - start < 30 * arch::kDefaultTimerPeriodNs) arch::irq_wait();
  run_on_all_cpus(&read_ticks, after);
  for (unsigned i = 0; i < num_cpus(); ++i) {
    if (!cpu_online(i)) continue;
    KEXPECT_GE(after[i], before[i] + 5);
  }
}

KTEST(smp_irq_edu_msi_steered_to_every_cpu_completes_there) {
  Devices* d = nullptr;
  {
    auto r = devices_init(kernel_env());
    KREQUIRE_OK(r);
    d = *r;
  }
  const Devices::Edu* e = d->edu_with_mask(kMask32);
  KREQUIRE_TRUE(e != nullptr);
  Pages a(0);
  Pages b(0);
  KREQUIRE_TRUE(a.ok() && b.ok());
  const KernelDmaOp::Stats s0 = kernel_env().dma->stats();
  for (unsigned cpu = 0; cpu < num_cpus(); ++cpu) {
    if (!cpu_online(cpu)) continue;
    EduDevice edu;
    DeviceDma dma(kernel_env().dma, e->dma_mask);
    dma.set_name("edu-smp-irq");
    KREQUIRE_OK(edu.init(e->dev, dma));
    KREQUIRE_OK(edu.enable_interrupts(cpu));
    // Bounced on every other CPU, so that the handler's unmap is also the copy out of the slot.
    edu.dma().set_force_bounce(cpu % 2 == 1);
    const uint32_t seed = 0x5100 + cpu;
    ktest_util::fill_pattern(a.va(), kPage, seed);
    support::fill_bytes(b.va(), 0, kPage);
    KREQUIRE_OK(edu.copy_to_device(a.va(), kPage));
    KREQUIRE_OK(edu.copy_from_device(b.va(), kPage));
    KEXPECT_EQ(ktest_util::check_pattern(b.va(), kPage, seed), kPage);
    KEXPECT_EQ(edu.stats().interrupts, 2u);
    KEXPECT_EQ(edu.stats().irq_unmaps, 2u);
    edu.disable_interrupts();
    KEXPECT_EQ(edu.dma().check_no_mappings(), 0u);
  }
  KEXPECT_EQ(kernel_env().dma->stats().live_maps, s0.live_maps);
}
