// The testkernel/arch.h contract for RISC-V 64: thin forwards to the platform object.
#include "testkernel/arch.h"

#include "arch/riscv64/testkernel/riscv64_platform.h"
#include "dmakit/arch/riscv64_dma_op.h"
#include "dmakit/support/assert.h"
#include "dmakit/support/utility.h"
#include "testkernel/panic.h"
#include "testkernel/split_table_pool.h"

namespace arch {

namespace {
alignas(Riscv64DmaOp) unsigned char g_dma_op_storage[sizeof(Riscv64DmaOp)];
bool g_dma_op_created = false;
// Lent to dmakit for splits of the direct map; in the image, which the direct map holds.
SplitTablePool g_split_tables;
}  // namespace

void console_putc(char c) {
  riscv::platform().console_putc(c);
}

void exit_qemu(bool success) {
  riscv::platform().exit(success);
}

uint64_t now_ns() {
  return riscv::platform().now_ns();
}

KernelDmaOp& create_dma_op(const KernelDmaOp::Config& cfg) {
  KASSERT(!g_dma_op_created, "arch::create_dma_op called twice");
  g_dma_op_created = true;
  constexpr uintptr_t kOffset = riscv::Riscv64Platform::kDirectMapOffset;
  auto pt = riscv::Sv39PageTable::describe_active(kOffset);
  if (!pt.ok()) kpanic("riscv64: DmaOp built with paging off");
  g_split_tables.describe(kOffset, &*pt);
  return *new (g_dma_op_storage) Riscv64DmaOp(cfg, riscv::platform().cache_ops(), &*pt);
}

size_t direct_map_split_tables() {
  return g_split_tables.in_use();
}

// RISC-V has no break-before-make rule: the library changes a live entry in place (a large leaf
// becomes a table of identical leaves, a 4 KiB leaf changes its PBMT field), each followed by
// sfence.vma on every hart through the kernel hook (an SBI remote fence here). Another hart using
// the rest of a 2 MiB / 1 GiB region never finds it unmapped, so nothing is split ahead.
uint64_t direct_map_split_bytes(support::Span<const PhysRange>) {
  return 0;
}
Result<size_t> split_direct_map_at_boot(support::Span<const PhysRange>, PhysRange) {
  return size_t{0};
}

Result<const char*> translated_attribute(const void*) {
  return ErrorCode::kNotSupported;
}

size_t cache_line_size() {
  return riscv::platform().cache_ops().block_size;
}

const char* cache_features() {
  return riscv::platform().cache_features();
}

const char* mapping_attribute(const void* va) {
  return riscv::platform().mapping_attribute(va);
}

}  // namespace arch
