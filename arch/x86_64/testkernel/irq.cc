// The arch::irq_* / msi_* / timer_* contract (testkernel/arch.h) on x86-64. See irq.h.
#include "arch/x86_64/testkernel/irq.h"

#include "arch/common/testkernel/irq_table.h"
#include "arch/x86_64/testkernel/acpi.h"
#include "arch/x86_64/testkernel/cpu.h"
#include "arch/x86_64/testkernel/ioapic.h"
#include "arch/x86_64/testkernel/lapic.h"
#include "arch/x86_64/testkernel/pvh.h"
#include "arch/x86_64/testkernel/tsc_clock.h"
#include "arch/x86_64/testkernel/x86_64_platform.h"
#include "testkernel/arch.h"
#include "testkernel/percpu.h"

namespace x86 {
namespace {

constexpr uint64_t kMsiAddressBase = 0xFEE0'0000;
constexpr uint32_t kTimerDivideBy16 = 0x3;
constexpr uint64_t kCalibrationNs = 10'000'000;
constexpr uint64_t kMinPeriodNs = 100'000;
constexpr uint64_t kMaxPeriodNs = 1'000'000'000;
constexpr uint16_t kPic1Data = 0x21;
constexpr uint16_t kPic2Data = 0xA1;

struct TimerState {
  arch::IrqHandler tick = nullptr;
  void* ctx = nullptr;
  uint64_t ticks = 0;
};

arch_common::IrqTable<kNumMsiVectors> g_vectors;
arch_common::IrqCounters g_counters;
bool g_ready = false;
uint64_t g_lapic_timer_hz = 0;  // After the divide-by-16.
unsigned g_ioapic_pins = 0;
uint32_t g_cpu_apic_id[kMaxCpus];
bool g_cpu_online[kMaxCpus];
TimerState g_timer[kMaxCpus];
char g_description[96];

// Counts LAPIC timer ticks (divide by 16) over kCalibrationNs of the TSC clock.
uint64_t calibrate_lapic_timer() {
  lapic::write(lapic::kRegTimerDivide, kTimerDivideBy16);
  lapic::write(lapic::kRegLvtTimer, lapic::kLvtMasked | kTimerVector);
  lapic::write(lapic::kRegTimerInitial, 0xFFFF'FFFFu);
  const uint64_t start = tsc_now_ns();
  while (tsc_now_ns() - start < kCalibrationNs) {
    __asm__ volatile("pause");
  }
  const uint32_t left = lapic::read(lapic::kRegTimerCurrent);
  const uint64_t elapsed = tsc_now_ns() - start;
  lapic::write(lapic::kRegTimerInitial, 0);
  const uint64_t counted = 0xFFFF'FFFFull - left;
  return counted * 1'000'000'000ull / elapsed;
}

void append(const char* s, size_t* n) {
  while (*s != '\0' && *n + 1 < sizeof(g_description)) g_description[(*n)++] = *s++;
  g_description[*n] = '\0';
}

void append_dec(uint64_t v, size_t* n) {
  char buf[24];
  int k = 0;
  do {
    buf[k++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  char out[24];
  int j = 0;
  while (k > 0) out[j++] = buf[--k];
  out[j] = '\0';
  append(out, n);
}

}  // namespace

void irq_dispatch(uint64_t vector) {
  IrqContext irq_context;
  if (vector == lapic::kSpuriousVector) {
    g_counters.count_spurious();  // No EOI for the spurious vector.
    return;
  }
  if (vector == kTimerVector) {
    TimerState& t = g_timer[cpu_index()];
    ++t.ticks;
    g_counters.count_taken();
    if (t.tick != nullptr) t.tick(t.ctx);
  } else {
    g_vectors.dispatch(static_cast<unsigned>(vector), g_counters);
  }
  lapic::eoi();
}

bool irq_init_secondary(unsigned index) {
  if (index == 0 || index >= kMaxCpus || !lapic::init_this_cpu()) return false;
  g_cpu_apic_id[index] = lapic::id();
  __atomic_store_n(&g_cpu_online[index], true, __ATOMIC_RELEASE);
  return true;
}

}  // namespace x86

using namespace x86;

namespace arch {

Result<void> irq_init() {
  if (g_ready) return support::ok();
  irq_disable_local();
  // The 8259s stay masked: their interrupts would arrive on vectors the BIOS chose, which
  // overlap the exceptions.
  MadtInterruptInfo madt;
  const bool have_madt = acpi_interrupt_info(pvh_info().rsdp_phys, &madt);
  if (!have_madt || madt.pcat_compat) {
    outb(kPic1Data, 0xFF);
    outb(kPic2Data, 0xFF);
  }
  if (have_madt) {
    TRY_ASSIGN(g_ioapic_pins, ioapic_mask_all(madt));
  }
  if (!lapic::init_this_cpu()) return ErrorCode::kNotFound;
  g_cpu_apic_id[0] = lapic::id();
  g_cpu_online[0] = true;
  g_vectors.set_range(kFirstMsiVector, kNumMsiVectors);
  g_lapic_timer_hz = calibrate_lapic_timer();
  if (g_lapic_timer_hz == 0) return ErrorCode::kNotSupported;

  size_t n = 0;
  append(lapic::x2apic() ? "x2apic" : "xapic", &n);
  append(" (timer ", &n);
  append_dec(g_lapic_timer_hz / 1000, &n);
  append(" kHz) + ", &n);
  append_dec(madt.num_ioapics, &n);
  append(" ioapic (", &n);
  append_dec(g_ioapic_pins, &n);
  append(" pins masked); msi to lapic, vectors 0x30-0xdf", &n);
  g_ready = true;
  return support::ok();
}

const char* irq_controller() {
  return g_description;
}

void irq_enable_local() {
  __asm__ volatile("sti" ::: "memory");
}

void irq_disable_local() {
  __asm__ volatile("cli" ::: "memory");
}

uintptr_t irq_save() {
  uint64_t flags;
  __asm__ volatile("pushfq; popq %0; cli" : "=r"(flags)::"memory");
  return flags & (1u << 9);
}

void irq_restore(uintptr_t state) {
  if ((state & (1u << 9)) != 0) __asm__ volatile("sti" ::: "memory");
}

bool irq_enabled_local() {
  uint64_t flags;
  __asm__ volatile("pushfq; popq %0" : "=r"(flags));
  return (flags & (1u << 9)) != 0;
}

void irq_wait() {
  arch_common::wait_for_interrupt(g_counters, 1'000'000);
}

Result<MsiMessage> msi_alloc(IrqHandler handler, void* ctx, unsigned cpu, uint32_t) {
  if (!g_ready || handler == nullptr || cpu >= kMaxCpus ||
      !__atomic_load_n(&g_cpu_online[cpu], __ATOMIC_ACQUIRE)) {
    return ErrorCode::kInvalidArgument;
  }
  // The MSI address has 8 bits of destination: a larger x2APIC ID needs interrupt remapping.
  if (g_cpu_apic_id[cpu] > 0xFF) return ErrorCode::kNotSupported;
  TRY_ASSIGN(unsigned vector, g_vectors.claim(handler, ctx));
  MsiMessage m;
  // Physical destination mode, no redirection hint; data: fixed delivery, edge, the vector.
  m.address = kMsiAddressBase | (uint64_t{g_cpu_apic_id[cpu]} << 12);
  m.data = vector;
  return m;
}

Result<void> msi_free(const MsiMessage& msg) {
  if ((msg.address & ~0xFF000ull) != kMsiAddressBase) return ErrorCode::kNotFound;
  return g_vectors.release(msg.data & 0xFF);
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
  lapic::write(lapic::kRegLvtTimer, lapic::kLvtMasked | kTimerVector);
  t.tick = tick;
  t.ctx = ctx;
  uint64_t count = g_lapic_timer_hz * period_ns / 1'000'000'000ull;
  if (count == 0) count = 1;
  if (count > 0xFFFF'FFFFull) count = 0xFFFF'FFFFull;
  lapic::write(lapic::kRegTimerDivide, kTimerDivideBy16);
  lapic::write(lapic::kRegLvtTimer, lapic::kLvtTimerPeriodic | kTimerVector);
  lapic::write(lapic::kRegTimerInitial, static_cast<uint32_t>(count));
  irq_restore(flags);
  return support::ok();
}

void timer_stop_this_cpu() {
  if (!g_ready) return;
  const uintptr_t flags = irq_save();
  lapic::write(lapic::kRegLvtTimer, lapic::kLvtMasked | kTimerVector);
  lapic::write(lapic::kRegTimerInitial, 0);
  TimerState& t = g_timer[cpu_index()];
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
