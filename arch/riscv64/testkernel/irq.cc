// The arch::irq_* / msi_* / timer_* contract (testkernel/arch.h) on RISC-V. See irq.h, imsic.h.
#include "arch/riscv64/testkernel/irq.h"

#include "arch/common/testkernel/irq_table.h"
#include "arch/riscv64/testkernel/csr.h"
#include "arch/riscv64/testkernel/imsic.h"
#include "arch/riscv64/testkernel/sbi.h"
#include "testkernel/arch.h"
#include "testkernel/fdt.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "testkernel/percpu.h"

namespace {

constexpr unsigned kMaxIds = 2047;  // AIA: at most 2047 identities per file.
constexpr uint64_t kMinPeriodNs = 100'000;
constexpr uint64_t kMaxPeriodNs = 1'000'000'000;
constexpr uint64_t kSstatusSie = 1u << 1;
constexpr uint64_t kSieStie = 1u << 5;
constexpr uint64_t kSieSeie = 1u << 9;
constexpr uint64_t kCauseSoftware = 1;
constexpr uint64_t kCauseTimer = 5;
constexpr uint64_t kSipSsip = 1u << 1;
constexpr uint64_t kCauseExternal = 9;
constexpr uint64_t kExtTime = 0x54494D45;  // SBI "TIME": set_timer is function 0.
constexpr unsigned kExternalIrq = 9;       // interrupts-extended cause of an S-level file.

struct TimerState {
  arch::IrqHandler tick = nullptr;
  void* ctx = nullptr;
  uint64_t period = 0;  // `time` ticks; 0: stopped.
  uint64_t ticks = 0;
};

arch_common::IrqTable<kMaxIds> g_ids;
arch_common::IrqCounters g_counters;
bool g_ready = false;
unsigned g_num_ids = 0;
uint64_t g_imsic_base = 0;
uint64_t g_imsic_stride = 0;
unsigned g_imsic_harts = 0;
uint64_t g_timebase_hz = 0;
bool g_cpu_online[kMaxCpus];
TimerState g_timer[kMaxCpus];
char g_description[128];

void set_timer(uint64_t deadline) {
  (void)riscv::sbi::call(kExtTime, 0, deadline);
}

void csr_set_sie(uint64_t bits) {
  __asm__ volatile("csrs sie, %0" ::"r"(bits) : "memory");
}
void csr_clear_sie(uint64_t bits) {
  __asm__ volatile("csrc sie, %0" ::"r"(bits) : "memory");
}

uint64_t ns_to_time(uint64_t ns) {
  return (ns / 1'000'000'000ull) * g_timebase_hz +
         (ns % 1'000'000'000ull) * g_timebase_hz / 1'000'000'000ull;
}

void timer_interrupt() {
  TimerState& t = g_timer[cpu_index()];
  ++t.ticks;
  g_counters.count_taken();
  if (t.period == 0) {
    set_timer(~0ull);  // Stopped meanwhile: no further deadline clears STIP.
    csr_clear_sie(kSieStie);
    return;
  }
  set_timer(riscv::read_time() + t.period);
  if (t.tick != nullptr) t.tick(t.ctx);
}

// The S-level IMSIC: the enabled "riscv,imsics" node whose interrupts-extended entries are
// supervisor external interrupts.
Result<void> find_imsic(const Fdt& fdt) {
  for (FdtNode n = fdt.find_compatible("riscv,imsics"); n.valid();
       n = fdt.find_compatible("riscv,imsics", n)) {
    if (!fdt.is_enabled(n)) continue;
    FdtProp ie = fdt.prop(n, "interrupts-extended");
    if (!ie.found() || ie.len < 8 || Fdt::be32(ie.data + 4) != kExternalIrq) continue;
    TRY_ASSIGN(PhysRange r, fdt.reg(n, 0));
    auto ids = fdt.prop_u32(n, "riscv,num-ids");
    auto guest_bits = fdt.prop_u32(n, "riscv,guest-index-bits");
    g_imsic_base = r.base.value();
    g_imsic_stride = 4096ull << (guest_bits.ok() ? *guest_bits : 0);
    g_imsic_harts = ie.len / 8;
    g_num_ids = ids.ok() ? *ids : 63;
    if (g_num_ids > kMaxIds) g_num_ids = kMaxIds;
    return support::ok();
  }
  return ErrorCode::kNotFound;
}

uint64_t timebase_hz(const Fdt& fdt) {
  FdtNode cpus = fdt.find_path("/cpus");
  auto tb = fdt.prop_u32(cpus, "timebase-frequency");
  if (tb.ok()) return *tb;
  auto cpu_tb = fdt.prop_u32(fdt.cpu_node(0), "timebase-frequency");
  return cpu_tb.ok() ? *cpu_tb : 0;
}

}  // namespace

namespace riscv {

void irq_dispatch(uint64_t scause) {
  IrqContext irq_context;
  const uint64_t code = scause & ~kScauseInterrupt;
  if (code == kCauseTimer) {
    timer_interrupt();
    return;
  }
  if (code == kCauseSoftware) {
    // An SBI IPI (arch::wake_cpu): it only ended the hart's wfi. SSIP stays set until cleared.
    __asm__ volatile("csrc sip, %0" ::"r"(kSipSsip) : "memory");
    g_counters.count_taken();
    return;
  }
  if (code == kCauseExternal) {
    // Claiming clears the identity's pending bit (the edge is consumed) before its handler runs,
    // so a message the device sends meanwhile is taken on the next round.
    for (unsigned id = imsic::claim(); id != 0; id = imsic::claim()) {
      g_ids.dispatch(id, g_counters);
    }
    return;
  }
  g_counters.count_spurious();
}

bool irq_init_secondary(unsigned index) {
  if (!g_ready || index == 0 || index >= kMaxCpus || cpu_data(index).hw_id >= g_imsic_harts) {
    return false;
  }
  imsic::init_this_hart(g_num_ids);
  set_timer(~0ull);
  csr_clear_sie(kSieStie);
  csr_set_sie(kSieSeie);
  __atomic_store_n(&g_cpu_online[index], true, __ATOMIC_RELEASE);
  return true;
}

size_t imsic_s_file_pages(PhysAddr* pages, size_t max) {
  size_t n = g_imsic_base == 0 ? 0 : g_imsic_harts;
  for (size_t i = 0; i < n && i < max; ++i) pages[i] = PhysAddr(g_imsic_base + i * g_imsic_stride);
  return n;
}

}  // namespace riscv

namespace arch {

Result<void> irq_init() {
  if (g_ready) return support::ok();
  irq_disable_local();
  auto fdt = Fdt::from(kernel_env().boot->fdt);
  if (!fdt.ok()) return ErrorCode::kNotFound;
  TRY(find_imsic(*fdt));
  g_timebase_hz = timebase_hz(*fdt);
  if (g_timebase_hz == 0 || !riscv::sbi::probe_extension(kExtTime)) {
    return ErrorCode::kNotSupported;
  }
  g_ids.set_range(1, g_num_ids);  // Identity 0 means "none".
  riscv::imsic::init_this_hart(g_num_ids);
  set_timer(~0ull);
  csr_clear_sie(kSieStie);
  csr_set_sie(kSieSeie);
  g_cpu_online[0] = true;
  ksnprintf(g_description, sizeof(g_description),
            "aia imsic s-files at 0x%llx (%u ids, %u harts); timer by sbi set_timer",
            static_cast<unsigned long long>(g_imsic_base), g_num_ids, g_imsic_harts);
  g_ready = true;
  return support::ok();
}

const char* irq_controller() {
  return g_description;
}

void irq_enable_local() {
  __asm__ volatile("csrs sstatus, %0" ::"r"(kSstatusSie) : "memory");
}

void irq_disable_local() {
  __asm__ volatile("csrc sstatus, %0" ::"r"(kSstatusSie) : "memory");
}

uintptr_t irq_save() {
  uint64_t old;
  __asm__ volatile("csrrc %0, sstatus, %1" : "=r"(old) : "r"(kSstatusSie) : "memory");
  return old & kSstatusSie;
}

void irq_restore(uintptr_t state) {
  if ((state & kSstatusSie) != 0) irq_enable_local();
}

bool irq_enabled_local() {
  uint64_t v;
  __asm__ volatile("csrr %0, sstatus" : "=r"(v));
  return (v & kSstatusSie) != 0;
}

void irq_wait() {
  arch_common::wait_for_interrupt(g_counters, 1'000'000);
}

Result<MsiMessage> msi_alloc(IrqHandler handler, void* ctx, unsigned cpu, uint32_t) {
  if (!g_ready || handler == nullptr || cpu >= kMaxCpus ||
      !__atomic_load_n(&g_cpu_online[cpu], __ATOMIC_ACQUIRE)) {
    return ErrorCode::kInvalidArgument;
  }
  TRY_ASSIGN(unsigned id, g_ids.claim(handler, ctx));
  MsiMessage m;
  // The hart's file: QEMU virt lists the S-level files in hart-ID order, and the boot hart
  // (CPU 0) is whichever hart OpenSBI chose.
  m.address = g_imsic_base + cpu_data(cpu).hw_id * g_imsic_stride;
  m.data = id;
  return m;
}

Result<void> msi_free(const MsiMessage& msg) {
  if (msg.address < g_imsic_base ||
      msg.address >= g_imsic_base + uint64_t{g_imsic_harts} * g_imsic_stride ||
      !g_ids.contains(msg.data)) {
    return ErrorCode::kNotFound;
  }
  return g_ids.release(msg.data);
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
  t.period = ns_to_time(period_ns);
  if (t.period == 0) t.period = 1;
  set_timer(riscv::read_time() + t.period);
  csr_set_sie(kSieStie);
  irq_restore(flags);
  return support::ok();
}

void timer_stop_this_cpu() {
  if (!g_ready) return;
  const uintptr_t flags = irq_save();
  TimerState& t = g_timer[cpu_index()];
  csr_clear_sie(kSieStie);
  set_timer(~0ull);
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
