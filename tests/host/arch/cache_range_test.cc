// The architectures' own cache-maintenance decisions (arch/<arch>/<arch>_line_ops.h over the
// shared walk, include/dmakit/arch/cache_range.h) against the host cache model: the code each
// kernel runs, with only the instructions replaced by their effect on the model
// (arch/host/model_line_ops.h). QEMU models no caches, so this is where a wrong decision (an
// invalidate of a partial line, a line left out at an edge, a walk that wraps) shows.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "arch/host/cache_model.h"
#include "arch/host/model_line_ops.h"
#include "dmakit/arch/aarch64_line_ops.h"
#include "dmakit/arch/cache_range.h"
#include "dmakit/arch/riscv64_line_ops.h"
#include "dmakit/arch/x86_64_line_ops.h"

namespace {

using cache_range::CacheOp;

enum class Arch { kAArch64, kRiscv64, kRiscv64NoInval, kX86Clwb, kX86Clflushopt, kX86Clflush };

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::kAArch64:
      return "AArch64";
    case Arch::kRiscv64:
      return "Riscv64";
    case Arch::kRiscv64NoInval:
      return "Riscv64NoInval";
    case Arch::kX86Clwb:
      return "X86Clwb";
    case Arch::kX86Clflushopt:
      return "X86Clflushopt";
    case Arch::kX86Clflush:
      return "X86Clflush";
  }
  return "?";
}

// Whether whole lines inside an invalidated range are dropped without a write-back.
bool invalidates_whole_lines(Arch a) {
  return a == Arch::kAArch64 || a == Arch::kRiscv64;
}

// Runs `arch`'s decisions for `op` over [addr, addr + size), `base` standing for offset 0 of
// the model.
void run(Arch arch, CacheModel* model, uintptr_t base, CacheOp op, uintptr_t addr, size_t size,
         ModelTrace* trace = nullptr) {
  ModelLines lines(model, base, trace);
  const size_t line = model->line_size();
  switch (arch) {
    case Arch::kAArch64: {
      AArch64LineOps<ModelDcInsns> ops(ModelDcInsns{&lines}, line);
      cache_range::maintain(ops, op, addr, size);
      break;
    }
    case Arch::kRiscv64:
    case Arch::kRiscv64NoInval: {
      Riscv64LineOps<ModelCboInsns> ops(ModelCboInsns{&lines}, line, arch == Arch::kRiscv64);
      cache_range::maintain(ops, op, addr, size);
      break;
    }
    case Arch::kX86Clwb:
    case Arch::kX86Clflushopt:
    case Arch::kX86Clflush: {
      const X86FlushInsn f = arch == Arch::kX86Clwb         ? X86FlushInsn::kClwb
                             : arch == Arch::kX86Clflushopt ? X86FlushInsn::kClflushopt
                                                            : X86FlushInsn::kClflush;
      const X86InvalInsn i =
          arch == Arch::kX86Clflush ? X86InvalInsn::kClflush : X86InvalInsn::kClflushopt;
      X86LineOps<ModelX86Insns> ops(ModelX86Insns{&lines}, line, f, i);
      cache_range::maintain(ops, op, addr, size);
      break;
    }
  }
}

constexpr size_t kRegion = 4 * 4096;

// Simulated memory behind the model: page aligned, so the model tracks CPU stores.
class Region {
 public:
  explicit Region(size_t line) : model_(map_.cpu, kRegion, line, CacheModel::Tracking::kStores) {}
  uint8_t* cpu() { return map_.cpu; }
  CacheModel& model() { return model_; }
  uint8_t device_byte(size_t off) {
    uint8_t b = 0;
    model_.device_read(off, &b, 1, false);
    return b;
  }
  void device_fill(size_t off, uint8_t v, size_t len) {
    std::vector<uint8_t> bytes(len, v);
    model_.device_write(off, bytes.data(), len, false);
  }

 private:
  // Unmapped after the model is gone (it makes the pages writable again on destruction).
  struct Mapping {
    uint8_t* cpu = static_cast<uint8_t*>(
        mmap(nullptr, kRegion, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    ~Mapping() { munmap(cpu, kRegion); }
  };
  Mapping map_;
  CacheModel model_;
};

class CacheRangeTest : public testing::TestWithParam<std::tuple<Arch, size_t>> {
 protected:
  CacheRangeTest() : arch_(std::get<0>(GetParam())), line_(std::get<1>(GetParam())), r_(line_) {}
  uintptr_t base() { return reinterpret_cast<uintptr_t>(r_.cpu()); }
  void run_op(CacheOp op, size_t off, size_t size, ModelTrace* trace = nullptr) {
    run(arch_, &r_.model(), base(), op, base() + off, size, trace);
  }
  // Everything synchronised: memory and the CPU hold `v`, no line dirty.
  void sync_all(uint8_t v) {
    std::memset(r_.cpu(), v, kRegion);
    r_.model().evict_all();
    r_.model().invalidate(0, kRegion);
  }

  Arch arch_;
  size_t line_;
  Region r_;
};

// A buffer that starts 8 bytes into a line and ends 8 bytes into another, with neighbours on both
// sides in the same lines: the DMA-into-a-struct-member case.
TEST_P(CacheRangeTest, InvalidateKeepsTheNeighboursCpuWritesInPartialLines) {
  sync_all(0xAA);
  const size_t off = 2 * line_ + 8;
  const size_t size = 3 * line_;  // Ends 8 bytes into line 5.
  // While the device owns the buffer, the CPU writes its neighbours (dirty, cached only)...
  r_.cpu()[off - 1] = 0x11;
  r_.cpu()[off + size] = 0x22;
  // ...and the device writes the buffer.
  r_.device_fill(off, 0xDD, size);
  run_op(CacheOp::kInvalidate, off, size);
  // The neighbours' writes survive, in the CPU's view and in memory.
  EXPECT_EQ(r_.cpu()[off - 1], 0x11);
  EXPECT_EQ(r_.cpu()[off + size], 0x22);
  EXPECT_EQ(r_.device_byte(off - 1), 0x11);
  EXPECT_EQ(r_.device_byte(off + size), 0x22);
  // The lines wholly inside show the device's data.
  for (size_t i = 3 * line_; i < 5 * line_; ++i) ASSERT_EQ(r_.cpu()[i], 0xDD) << i;
  // Lines outside the range were not touched.
  r_.cpu()[0] = 0x33;
  EXPECT_EQ(r_.device_byte(0), 0xAA);
  EXPECT_TRUE(r_.model().line_dirty(0));
}

// The same neighbours, stored to with the value they already had: still dirty, still written
// back (a model that compared values would not show the difference between a clean+invalidate
// and an invalidate of the partial line here).
TEST_P(CacheRangeTest, InvalidateKeepsANeighbourStoreOfTheSameValue) {
  sync_all(0xAA);
  const size_t off = line_ + 4;
  const size_t size = line_ - 8;  // Inside one line, partial at both ends.
  *reinterpret_cast<volatile uint8_t*>(r_.cpu() + off - 1) = 0xAA;  // Unchanged value.
  r_.device_fill(off - 4, 0x5A, line_);  // The device (wrongly) writes the whole line.
  run_op(CacheOp::kInvalidate, off, size);
  // The CPU's dirty line went back whole: hardware would overwrite the device's bytes.
  EXPECT_EQ(r_.device_byte(off - 1), 0xAA);
  EXPECT_EQ(r_.device_byte(off), 0xAA);
  EXPECT_EQ(r_.cpu()[off], 0xAA);
}

TEST_P(CacheRangeTest, InvalidateOfWholeLinesDropsOrWritesBackAsTheArchitectureDoes) {
  sync_all(0x10);
  const size_t off = line_;
  const size_t size = 2 * line_;
  r_.cpu()[off + 3] = 0x77;  // Dirty, in a line wholly inside the range.
  r_.device_fill(off, 0xDD, size);
  run_op(CacheOp::kInvalidate, off, size);
  if (invalidates_whole_lines(arch_)) {
    // Dropped: the CPU's write is gone, the device's data is what the CPU sees.
    EXPECT_EQ(r_.cpu()[off + 3], 0xDD);
    EXPECT_EQ(r_.device_byte(off + 3), 0xDD);
    EXPECT_EQ(r_.cpu()[off + 4], 0xDD);
  } else {
    // Written back first (x86, RISC-V without cbo.inval): the CPU's line replaced the device's.
    EXPECT_EQ(r_.cpu()[off + 3], 0x77);
    EXPECT_EQ(r_.device_byte(off + 4), 0x10);
  }
  // The second line was clean: the device's data either way.
  EXPECT_EQ(r_.cpu()[off + line_], 0xDD);
  EXPECT_FALSE(r_.model().line_dirty(off));
}

TEST_P(CacheRangeTest, CleanWritesBackEveryLineTheRangeTouches) {
  sync_all(0x00);
  const size_t off = line_ - 1;         // Last byte of line 0...
  const size_t size = line_ + 2;        // ...to the first byte of line 2.
  r_.cpu()[0] = 1;                      // Line 0, outside the range but in its first line.
  r_.cpu()[line_ + 5] = 2;              // Line 1.
  r_.cpu()[2 * line_ + line_ - 1] = 3;  // Line 2, past the range's last byte.
  r_.cpu()[3 * line_] = 4;              // Line 3: not touched by the range.
  run_op(CacheOp::kClean, off, size);
  EXPECT_EQ(r_.device_byte(0), 1);
  EXPECT_EQ(r_.device_byte(line_ + 5), 2);
  EXPECT_EQ(r_.device_byte(3 * line_ - 1), 3);
  EXPECT_EQ(r_.device_byte(3 * line_), 0);
  EXPECT_TRUE(r_.model().line_dirty(3 * line_));
  EXPECT_FALSE(r_.model().line_dirty(0));
}

TEST_P(CacheRangeTest, CleanInvalidateWritesBackAndReloadsEveryLine) {
  sync_all(0x00);
  r_.cpu()[5] = 9;
  r_.device_fill(line_ + 1, 0xEE, 1);
  run_op(CacheOp::kCleanInvalidate, 3, 2 * line_ - 6);
  EXPECT_EQ(r_.device_byte(5), 9);
  EXPECT_EQ(r_.cpu()[line_ + 1], 0xEE);
  EXPECT_FALSE(r_.model().line_dirty(0));
}

TEST_P(CacheRangeTest, SizeZeroDoesNothingAtAll) {
  sync_all(0x00);
  r_.cpu()[64] = 1;
  ModelTrace trace;
  for (CacheOp op : {CacheOp::kClean, CacheOp::kInvalidate, CacheOp::kCleanInvalidate}) {
    run_op(op, 64, 0, &trace);
  }
  EXPECT_TRUE(trace.events.empty());
  EXPECT_EQ(r_.device_byte(64), 0);
  EXPECT_EQ(r_.cpu()[64], 1);
}

// The model's region stands for the last kRegion bytes of the address space: a range ending at
// the top must reach its last line, and the walk must not wrap to address 0.
TEST_P(CacheRangeTest, RangesEndingAtTheTopOfTheAddressSpace) {
  sync_all(0x00);
  const uintptr_t top_base = uintptr_t{0} - kRegion;
  const size_t size = 3 * line_ + 5;
  const uintptr_t addr = uintptr_t{0} - size;  // Last byte: 0xFFFF...FFFF.
  const size_t off = kRegion - size;
  for (size_t i = off; i < kRegion; i += line_ / 2) r_.cpu()[i] = 0x42;
  r_.cpu()[kRegion - 1] = 0x43;
  ModelTrace trace;
  run(arch_, &r_.model(), top_base, CacheOp::kClean, addr, size, &trace);
  EXPECT_EQ(r_.device_byte(kRegion - 1), 0x43);
  EXPECT_EQ(r_.device_byte(off), 0x42);
  size_t lines = 0;
  uintptr_t last = 0;
  for (const auto& e : trace.events) {
    if (e.addr != 0) {
      ++lines;
      last = e.addr;
    }
  }
  EXPECT_EQ(lines, 4u);  // A partial first line and three whole ones.
  EXPECT_EQ(last, uintptr_t{0} - line_);
  // Invalidate too: the device's data in the top line reaches the CPU, the partial first line's
  // neighbour survives.
  r_.cpu()[off - 1] = 0x99;
  r_.device_fill(kRegion - line_, 0xD0, line_);
  run(arch_, &r_.model(), top_base, CacheOp::kInvalidate, addr, size);
  EXPECT_EQ(r_.cpu()[kRegion - 1], 0xD0);
  EXPECT_EQ(r_.device_byte(off - 1), 0x99);
  EXPECT_EQ(r_.cpu()[off - 1], 0x99);
}

INSTANTIATE_TEST_SUITE_P(AllArchitectures, CacheRangeTest,
                         testing::Combine(testing::Values(Arch::kAArch64, Arch::kRiscv64,
                                                          Arch::kRiscv64NoInval, Arch::kX86Clwb,
                                                          Arch::kX86Clflushopt, Arch::kX86Clflush),
                                          testing::Values(size_t{32}, size_t{64}, size_t{128})),
                         [](const testing::TestParamInfo<std::tuple<Arch, size_t>>& info) {
                           return std::string(arch_name(std::get<0>(info.param))) + "_Line" +
                                  std::to_string(std::get<1>(info.param));
                         });

// ---- The exact instruction sequences: which instruction on which line, and the barriers ----

std::vector<std::string> walk(Arch arch, CacheOp op, size_t first_off, size_t size) {
  Region r(64);
  ModelTrace trace;
  const auto base = reinterpret_cast<uintptr_t>(r.cpu());
  run(arch, &r.model(), base, op, base + first_off, size, &trace);
  std::vector<std::string> out;
  for (const auto& e : trace.events) {
    out.push_back(e.addr == 0 ? std::string(e.insn)
                              : std::string(e.insn) + "@" + std::to_string(e.addr - base));
  }
  return out;
}

using Seq = std::vector<std::string>;

// [72, 72 + 200): a partial line 64, whole lines 128 and 192, a partial line 256 (ends at 272).
constexpr size_t kOff = 72;
constexpr size_t kSize = 200;

TEST(CacheRangeSequenceTest, AArch64) {
  EXPECT_EQ(walk(Arch::kAArch64, CacheOp::kInvalidate, kOff, kSize),
            (Seq{"dc civac@64", "dc ivac@128", "dc ivac@192", "dc civac@256", "dsb sy"}));
  EXPECT_EQ(walk(Arch::kAArch64, CacheOp::kClean, kOff, kSize),
            (Seq{"dc cvac@64", "dc cvac@128", "dc cvac@192", "dc cvac@256", "dsb sy"}));
  EXPECT_EQ(walk(Arch::kAArch64, CacheOp::kCleanInvalidate, kOff, kSize),
            (Seq{"dc civac@64", "dc civac@128", "dc civac@192", "dc civac@256", "dsb sy"}));
  // Line aligned at both ends: no partial line, every line a plain invalidate.
  EXPECT_EQ(walk(Arch::kAArch64, CacheOp::kInvalidate, 128, 128),
            (Seq{"dc ivac@128", "dc ivac@192", "dsb sy"}));
  // One byte.
  EXPECT_EQ(walk(Arch::kAArch64, CacheOp::kInvalidate, 130, 1), (Seq{"dc civac@128", "dsb sy"}));
}

TEST(CacheRangeSequenceTest, Riscv64) {
  EXPECT_EQ(walk(Arch::kRiscv64, CacheOp::kInvalidate, kOff, kSize),
            (Seq{"fence rw,rw", "cbo.flush@64", "cbo.inval@128", "cbo.inval@192", "cbo.flush@256",
                 "fence rw,rw"}));
  EXPECT_EQ(walk(Arch::kRiscv64NoInval, CacheOp::kInvalidate, kOff, kSize),
            (Seq{"fence rw,rw", "cbo.flush@64", "cbo.flush@128", "cbo.flush@192", "cbo.flush@256",
                 "fence rw,rw"}));
  EXPECT_EQ(walk(Arch::kRiscv64, CacheOp::kClean, 64, 64),
            (Seq{"fence rw,rw", "cbo.clean@64", "fence rw,rw"}));
  EXPECT_EQ(walk(Arch::kRiscv64, CacheOp::kCleanInvalidate, 64, 65),
            (Seq{"fence rw,rw", "cbo.flush@64", "cbo.flush@128", "fence rw,rw"}));
}

TEST(CacheRangeSequenceTest, X86) {
  EXPECT_EQ(walk(Arch::kX86Clwb, CacheOp::kClean, kOff, kSize),
            (Seq{"clwb@64", "clwb@128", "clwb@192", "clwb@256", "sfence"}));
  EXPECT_EQ(walk(Arch::kX86Clflushopt, CacheOp::kClean, 64, 64), (Seq{"clflushopt@64", "sfence"}));
  EXPECT_EQ(walk(Arch::kX86Clflush, CacheOp::kClean, 64, 64), (Seq{"clflush@64", "mfence"}));
  EXPECT_EQ(walk(Arch::kX86Clwb, CacheOp::kInvalidate, kOff, kSize),
            (Seq{"mfence", "clflushopt@64", "clflushopt@128", "clflushopt@192", "clflushopt@256",
                 "mfence"}));
  EXPECT_EQ(walk(Arch::kX86Clflush, CacheOp::kCleanInvalidate, 64, 64),
            (Seq{"mfence", "clflush@64", "mfence"}));
}

}  // namespace
