// The arch::irq_* / msi_* / timer_* contract (testkernel/arch.h) on AArch64. See irq.h and gic.h.
#include "arch/aarch64/testkernel/irq.h"

#include "arch/aarch64/testkernel/gic.h"
#include "arch/aarch64/testkernel/gic_v3.h"
#include "arch/aarch64/testkernel/sysreg.h"
#include "arch/common/testkernel/irq_table.h"
#include "testkernel/arch.h"
#include "testkernel/fdt.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "testkernel/percpu.h"

namespace {

static_assert(kMaxCpus <= 8, "a GICv2 routes to at most 8 CPU interfaces");
// The SGI that wakes an idle CPU (wake_cpu); its handler has nothing to do.
constexpr unsigned kWakeSgi = 1;
constexpr unsigned kMaxMsis = 256;
constexpr unsigned kSpuriousFirst = 1020;
constexpr uint64_t kMinPeriodNs = 100'000;
constexpr uint64_t kMaxPeriodNs = 1'000'000'000;
constexpr uint64_t kCntvEnable = 1u << 0;
// The virtual timer's PPI on QEMU virt, used when the device tree does not say.
constexpr unsigned kDefaultVirtTimerPpi = 11;

struct TimerState {
  arch::IrqHandler tick = nullptr;
  void* ctx = nullptr;
  uint64_t period = 0;  // Counter ticks; 0: stopped.
  uint64_t ticks = 0;
};

arch_common::IrqTable<kMaxMsis> g_msis;
arch_common::IrqCounters g_counters;
bool g_ready = false;
bool g_v3 = false;
unsigned g_timer_id = 0;  // Interrupt ID of the virtual timer's PPI.
bool g_cpu_online[kMaxCpus];
TimerState g_timer[kMaxCpus];
char g_description[128];

// The GICv2 CPU interface number of CPU `index`: QEMU virt numbers them as MPIDR Aff0.
unsigned cpu_interface(unsigned index) {
  return static_cast<unsigned>(cpu_data(index).hw_id & 0xFF);
}

// The wake SGI and the timer PPI on the calling CPU (both banked per CPU).
void enable_local_sources() {
  if (g_v3) {
    aarch64::gicv3::enable_ppi(kWakeSgi);
    aarch64::gicv3::enable_ppi(g_timer_id);
  } else {
    aarch64::gic::enable(kWakeSgi, /*edge=*/true, 0);
    aarch64::gic::enable(g_timer_id, /*edge=*/false, 0);
  }
}

void write_cntv_ctl(uint64_t v) {
  __asm__ volatile("msr cntv_ctl_el0, %0; isb" ::"r"(v) : "memory");
}
void write_cntv_cval(uint64_t v) {
  __asm__ volatile("msr cntv_cval_el0, %0" ::"r"(v) : "memory");
}

uint64_t ns_to_counter(uint64_t ns) {
  const uint64_t freq = aarch64::read_cntfrq_el0();
  return (ns / 1'000'000'000ull) * freq + (ns % 1'000'000'000ull) * freq / 1'000'000'000ull;
}

void timer_interrupt() {
  TimerState& t = g_timer[cpu_index()];
  ++t.ticks;
  g_counters.count_taken();
  if (t.period == 0) {
    write_cntv_ctl(0);  // Stopped meanwhile: lower the line.
    return;
  }
  // The next deadline from now, not from the last one: a late tick does not cause a burst.
  write_cntv_cval(aarch64::read_cntvct_el0() + t.period);
  if (t.tick != nullptr) t.tick(t.ctx);
}

// The virtual timer's PPI from the "arm,armv8-timer" node: its interrupts property lists the
// secure physical, non-secure physical, virtual and hypervisor timers, 3 cells each (type,
// number, flags).
unsigned virt_timer_ppi(const Fdt& fdt) {
  FdtNode n = fdt.find_compatible("arm,armv8-timer");
  if (!n.valid()) return kDefaultVirtTimerPpi;
  FdtProp p = fdt.prop(n, "interrupts");
  if (!p.found() || p.len < 3 * 12) return kDefaultVirtTimerPpi;
  return Fdt::be32(p.data + 2 * 12 + 4);
}

}  // namespace

extern "C" void aarch64_irq() {
  IrqContext irq_context;
  for (;;) {
    const uint32_t iar = g_v3 ? aarch64::gicv3::ack() : aarch64::gic::ack();
    const uint32_t id = g_v3 ? iar : iar & 0x3FF;
    if (id >= kSpuriousFirst && id <= 1023) {
      if (id == 1023) g_counters.count_spurious();
      return;
    }
    if (id == g_timer_id) {
      timer_interrupt();
    } else if (id == kWakeSgi) {
      g_counters.count_taken();  // It only ended the target's wait for an interrupt.
    } else {
      g_msis.dispatch(id, g_counters);
    }
    if (g_v3) {
      aarch64::gicv3::eoi(iar);
    } else {
      aarch64::gic::eoi(iar);
    }
  }
}

Result<void> init_gicv3(const Fdt& fdt, FdtNode gic) {
  aarch64::gicv3::Description d;
  TRY_ASSIGN(PhysRange dist, fdt.reg(gic, 0));
  TRY_ASSIGN(PhysRange redist, fdt.reg(gic, 1));
  d.dist_phys = dist.base.value();
  d.redist_phys = redist.base.value();
  d.redist_size = redist.size;
  FdtNode its = fdt.find_compatible("arm,gic-v3-its");
  if (its.valid() && fdt.is_enabled(its)) {
    TRY_ASSIGN(PhysRange r, fdt.reg(its, 0));
    d.its_phys = r.base.value();
  }
  TRY(aarch64::gicv3::init(d));
  g_msis.set_range(aarch64::gicv3::lpi_first(), aarch64::gicv3::lpi_count());
  g_v3 = true;
  return support::ok();
}

namespace aarch64 {

bool irq_init_secondary(unsigned index) {
  if (!g_ready || index == 0 || index >= kMaxCpus) return false;
  if (g_v3) {
    if (!gicv3::cpu_init(index).ok()) return false;
  } else {
    gic::cpu_init();
  }
  write_cntv_ctl(0);
  enable_local_sources();
  __atomic_store_n(&g_cpu_online[index], true, __ATOMIC_RELEASE);
  return true;
}

void send_wake(unsigned index) {
  if (!g_ready || index >= kMaxCpus) return;
  if (g_v3) {
    gicv3::send_sgi(kWakeSgi, cpu_data(index).hw_id);
  } else {
    gic::send_sgi(kWakeSgi, cpu_interface(index));
  }
}

}  // namespace aarch64

namespace arch {

Result<void> irq_init() {
  if (g_ready) return support::ok();
  irq_disable_local();
  auto fdt = Fdt::from(kernel_env().boot->fdt);
  if (!fdt.ok()) return ErrorCode::kNotFound;
  FdtNode gic3 = fdt->find_compatible("arm,gic-v3");
  if (gic3.valid()) {
    TRY(init_gicv3(*fdt, gic3));
  } else {
    FdtNode gic = fdt->find_compatible("arm,cortex-a15-gic");
    if (!gic.valid()) return ErrorCode::kNotFound;
    aarch64::gic::Description d;
    TRY_ASSIGN(PhysRange dist, fdt->reg(gic, 0));
    TRY_ASSIGN(PhysRange cpu, fdt->reg(gic, 1));
    d.dist_phys = dist.base.value();
    d.cpu_phys = cpu.base.value();
    FdtNode v2m = fdt->find_compatible("arm,gic-v2m-frame");
    if (v2m.valid() && fdt->is_enabled(v2m)) {
      TRY_ASSIGN(PhysRange frame, fdt->reg(v2m, 0));
      d.v2m_phys = frame.base.value();
    }
    TRY(aarch64::gic::init(d));
    g_msis.set_range(aarch64::gic::msi_first(), aarch64::gic::msi_count());
  }
  g_timer_id = 16 + virt_timer_ppi(*fdt);
  write_cntv_ctl(0);
  enable_local_sources();
  g_cpu_online[0] = true;
  if (g_v3) {
    ksnprintf(g_description, sizeof(g_description),
              "gicv3 + its (%u msi lpis from %u, event id = lpi - 8192); virtual timer ppi %u",
              aarch64::gicv3::lpi_count(), aarch64::gicv3::lpi_first(), g_timer_id - 16);
  } else {
    ksnprintf(g_description, sizeof(g_description),
              "gicv2 (%u ids) + gicv2m (%u msi spis from %u); virtual timer ppi %u",
              aarch64::gic::num_ids(), aarch64::gic::msi_count(), aarch64::gic::msi_first(),
              g_timer_id - 16);
  }
  g_ready = true;
  return support::ok();
}

const char* irq_controller() {
  return g_description;
}

void irq_enable_local() {
  __asm__ volatile("msr daifclr, #2" ::: "memory");
}

void irq_disable_local() {
  __asm__ volatile("msr daifset, #2" ::: "memory");
}

uintptr_t irq_save() {
  uint64_t daif;
  __asm__ volatile("mrs %0, daif; msr daifset, #2" : "=r"(daif)::"memory");
  return daif;
}

void irq_restore(uintptr_t state) {
  __asm__ volatile("msr daif, %0" ::"r"(static_cast<uint64_t>(state)) : "memory");
}

bool irq_enabled_local() {
  uint64_t daif;
  __asm__ volatile("mrs %0, daif" : "=r"(daif));
  return (daif & (1u << 7)) == 0;
}

void irq_wait() {
  arch_common::wait_for_interrupt(g_counters, 1'000'000);
}

Result<MsiMessage> msi_alloc(IrqHandler handler, void* ctx, unsigned cpu, uint32_t requester_id) {
  if (!g_ready || handler == nullptr || cpu >= kMaxCpus ||
      !__atomic_load_n(&g_cpu_online[cpu], __ATOMIC_ACQUIRE)) {
    return ErrorCode::kInvalidArgument;
  }
  if (g_v3) {
    if (!aarch64::gicv3::has_its()) return ErrorCode::kNotSupported;
    TRY_ASSIGN(unsigned lpi, g_msis.claim(handler, ctx));
    auto r = aarch64::gicv3::its_map(requester_id, lpi, cpu);
    if (!r.ok()) {
      (void)g_msis.release(lpi);
      return r.error();
    }
    MsiMessage m;
    m.address = aarch64::gicv3::its_doorbell();
    m.data = lpi - aarch64::gicv3::lpi_first();
    return m;
  }
  if (aarch64::gic::msi_doorbell() == 0) return ErrorCode::kNotSupported;
  TRY_ASSIGN(unsigned id, g_msis.claim(handler, ctx));
  aarch64::gic::enable(id, /*edge=*/true, cpu_interface(cpu));
  MsiMessage m;
  m.address = aarch64::gic::msi_doorbell();
  m.data = id;
  return m;
}

Result<void> msi_free(const MsiMessage& msg) {
  if (g_v3) {
    const unsigned lpi = msg.data + aarch64::gicv3::lpi_first();
    if (!aarch64::gicv3::has_its() || msg.address != aarch64::gicv3::its_doorbell() ||
        !g_msis.contains(lpi)) {
      return ErrorCode::kNotFound;
    }
    TRY(aarch64::gicv3::its_unmap(lpi));
    return g_msis.release(lpi);
  }
  if (msg.address != aarch64::gic::msi_doorbell() || !g_msis.contains(msg.data)) {
    return ErrorCode::kNotFound;
  }
  aarch64::gic::disable(msg.data);
  return g_msis.release(msg.data);
}

uint64_t irq_count() {
  return g_counters.read_taken();
}

uint64_t irq_spurious_count() {
  return g_counters.read_spurious();
}

Result<void> timer_start_this_cpu(uint64_t period_ns, IrqHandler tick, void* ctx) {
  if (period_ns < kMinPeriodNs || period_ns > kMaxPeriodNs) return ErrorCode::kInvalidArgument;
  if (!g_ready) return ErrorCode::kNotSupported;
  const uintptr_t flags = irq_save();
  TimerState& t = g_timer[cpu_index()];
  t.tick = tick;
  t.ctx = ctx;
  t.period = ns_to_counter(period_ns);
  if (t.period == 0) t.period = 1;
  write_cntv_cval(aarch64::read_cntvct_el0() + t.period);
  write_cntv_ctl(kCntvEnable);
  irq_restore(flags);
  return support::ok();
}

void timer_stop_this_cpu() {
  if (!g_ready) return;
  const uintptr_t flags = irq_save();
  TimerState& t = g_timer[cpu_index()];
  write_cntv_ctl(0);
  t.period = 0;
  t.tick = nullptr;
  t.ctx = nullptr;
  irq_restore(flags);
}

uint64_t timer_ticks_this_cpu() {
  const uintptr_t flags = irq_save();
  const uint64_t n = g_timer[cpu_index()].ticks;
  irq_restore(flags);
  return n;
}

}  // namespace arch
