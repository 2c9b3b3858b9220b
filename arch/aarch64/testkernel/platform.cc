// The arch:: contract (testkernel/arch.h) for AArch64 QEMU virt: PL011 console, semihosting exit,
// generic-timer clock, the AArch64DmaOp, and page-table queries.
#include "arch/aarch64/testkernel/platform.h"
#include "arch/aarch64/testkernel/mmu.h"
#include "arch/aarch64/testkernel/sysreg.h"
#include "dmakit/arch/aarch64_dma_op.h"
#include "testkernel/arch.h"
#include "testkernel/kprintf.h"

namespace {

// PL011 registers (byte offsets).
constexpr uint64_t kUartDr = 0x00;
constexpr uint64_t kUartFr = 0x18;
constexpr uint64_t kUartLcrH = 0x2c;
constexpr uint64_t kUartCr = 0x30;
constexpr uint32_t kUartLcrH8N1Fifo = (3u << 5) | (1u << 4);           // WLEN = 8 bits, FEN.
constexpr uint32_t kUartCrEnable = (1u << 0) | (1u << 8) | (1u << 9);  // UARTEN, TXE, RXE.
constexpr uint32_t kUartFrTxff = 1u << 5;                              // Transmit FIFO full.

// Semihosting (Arm "Semihosting for AArch32 and AArch64"): SYS_EXIT with the extended
// parameter block {reason, subcode}; QEMU exits with status `subcode` for
// ADP_Stopped_ApplicationExit.
constexpr uint64_t kSysExit = 0x18;
constexpr uint64_t kAdpStoppedApplicationExit = 0x20026;

alignas(AArch64DmaOp) unsigned char g_dma_op_storage[sizeof(AArch64DmaOp)];
AArch64DmaOp* g_dma_op = nullptr;
char g_features[96];
int g_exiting = 0;

volatile uint32_t* uart_reg(uint64_t off) {
  return reinterpret_cast<volatile uint32_t*>(static_cast<uintptr_t>(aarch64::kPl011Phys + off));
}

}  // namespace

namespace aarch64 {

void console_init() {
  // QEMU's PL011 needs no baud rate; it only wants UARTEN and TXE set (it logs writes to a
  // disabled UART as guest errors). Disable, set 8N1 with FIFOs, enable.
  *uart_reg(kUartCr) = 0;
  *uart_reg(kUartLcrH) = kUartLcrH8N1Fifo;
  *uart_reg(kUartCr) = kUartCrEnable;
}

}  // namespace aarch64

namespace arch {

void console_putc(char c) {
  while ((*uart_reg(kUartFr) & kUartFrTxff) != 0) {
  }
  *uart_reg(kUartDr) = static_cast<uint8_t>(c);
}

void exit_qemu(bool success) {
  // A fault inside the exit path (semihosting disabled: HLT traps) must not loop back here.
  if (__atomic_exchange_n(&g_exiting, 1, __ATOMIC_ACQ_REL) == 0) {
    uint64_t block[2] = {kAdpStoppedApplicationExit, success ? 0u : 1u};
    register uint64_t x0 __asm__("x0") = kSysExit;
    register uint64_t x1 __asm__("x1") = reinterpret_cast<uintptr_t>(block);
    __asm__ volatile("hlt #0xf000" : "+r"(x0) : "r"(x1) : "memory");
  }
  for (;;) __asm__ volatile("wfi");
}

uint64_t now_ns() {
  uint64_t freq = aarch64::read_cntfrq_el0();
  uint64_t t = aarch64::read_cntvct_el0();
  if (freq == 0) return 0;
  // Split to avoid overflowing 64 bits (and needing 128-bit division).
  return (t / freq) * 1'000'000'000ull + (t % freq) * 1'000'000'000ull / freq;
}

KernelDmaOp& create_dma_op(const KernelDmaOp::Config& cfg) {
  KernelDmaOp::Config c = cfg;
  c.platform_coherent = false;  // QEMU virt: devices are not described as dma-coherent.
  g_dma_op = new (g_dma_op_storage)
      AArch64DmaOp(c, AArch64DmaOp::hardware_line_size(), aarch64::mmu_direct_map_tables());
  return *g_dma_op;
}

size_t cache_line_size() {
  return g_dma_op != nullptr ? g_dma_op->line_size() : AArch64DmaOp::hardware_line_size();
}

const char* cache_features() {
  uint64_t ctr = aarch64::read_ctr_el0();
  ksnprintf(g_features, sizeof(g_features),
            "dc cvac/ivac/civac by VA to PoC, line %zu (CTR_EL0 0x%llx%s%s)", cache_line_size(),
            static_cast<unsigned long long>(ctr), (ctr >> 28) & 1 ? ", IDC" : "",
            (ctr >> 29) & 1 ? ", DIC" : "");
  return g_features;
}

const char* mapping_attribute(const void* va) {
  aarch64::MemAttr attr;
  uint64_t pa = 0;
  if (!aarch64::mmu_lookup(reinterpret_cast<uintptr_t>(va), &attr, &pa)) return nullptr;
  switch (attr) {
    case aarch64::MemAttr::kDevice:
      return "device-ngnre";
    case aarch64::MemAttr::kNormalWb:
      return "normal-wb";
    case aarch64::MemAttr::kNormalNc:
      return "normal-nc";
    case aarch64::MemAttr::kDeviceStrict:
      return "device-ngnrne";
  }
  return "unknown";
}

}  // namespace arch
