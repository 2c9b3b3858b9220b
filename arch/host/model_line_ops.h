// The architectures' cache instructions, acting on the host cache model: what lets the host
// build instantiate each architecture's line ops (arch/<arch>/<arch>_line_ops.h) and the shared
// walk (include/dmakit/arch/cache_range.h) exactly as its kernel does, with the cache model
// standing in for the hardware. HostDmaOp uses them for its cache maintenance, and tests/host/arch/
// drives them directly.
//
// ModelLines translates an address to an offset in the model (`a - base`, modulo 2^64, so a test
// can place the modelled region anywhere, including at the top of the address space) and
// optionally records every instruction in a ModelTrace. Each Model*Insns type is the instruction
// set of one architecture, and says what each instruction does to a line:
//   clean            -- dc cvac, cbo.clean, clwb
//   invalidate       -- dc ivac, cbo.inval
//   clean+invalidate -- dc civac, cbo.flush, clflushopt, clflush
//   barrier          -- dsb sy, fence rw,rw, sfence, mfence (recorded only: the model is ordered)
//
// Threading: as the CacheModel (each call takes its lock); a ModelTrace belongs to one thread.
#pragma once

#include <cstdint>
#include <vector>

#include "arch/host/cache_model.h"

// What a walk did, in order: instruction mnemonic and line address (0 for barriers).
struct ModelTrace {
  struct Event {
    const char* insn;
    uintptr_t addr;
  };
  std::vector<Event> events;
};

class ModelLines {
 public:
  // `base`: the address that stands for offset 0 of the model's region.
  ModelLines(CacheModel* model, uintptr_t base, ModelTrace* trace = nullptr)
      : model_(model), base_(base), trace_(trace) {}
  // Whatever is still pending reaches the model.
  ~ModelLines() { apply(); }
  ModelLines(const ModelLines&) = delete;
  ModelLines& operator=(const ModelLines&) = delete;

  void clean(const char* insn, uintptr_t a) { line_op(Kind::kClean, insn, a); }
  void invalidate(const char* insn, uintptr_t a) { line_op(Kind::kInvalidate, insn, a); }
  void clean_invalidate(const char* insn, uintptr_t a) { line_op(Kind::kCleanInvalidate, insn, a); }
  // Everything before a barrier has reached the model when it returns.
  void barrier(const char* insn) {
    record(insn, 0);
    apply();
  }

 private:
  enum class Kind : uint8_t { kNone, kClean, kInvalidate, kCleanInvalidate };

  // Consecutive lines under the same operation reach the model as one range: the same effect
  // line by line (lines are independent), with one write of the CPU view instead of many.
  void line_op(Kind k, const char* insn, uintptr_t a) {
    record(insn, a);
    const auto off = static_cast<size_t>(a - base_);
    if (k == kind_ && off == end_) {
      end_ += model_->line_size();
      return;
    }
    apply();
    kind_ = k;
    start_ = off;
    end_ = off + model_->line_size();
  }
  void apply() {
    switch (kind_) {
      case Kind::kNone:
        return;
      case Kind::kClean:
        model_->clean(start_, end_ - start_);
        break;
      case Kind::kInvalidate:
        model_->invalidate(start_, end_ - start_);
        break;
      case Kind::kCleanInvalidate:
        model_->clean_invalidate(start_, end_ - start_);
        break;
    }
    kind_ = Kind::kNone;
  }
  void record(const char* insn, uintptr_t a) {
    if (trace_ != nullptr) trace_->events.push_back({insn, a});
  }

  CacheModel* model_;
  uintptr_t base_;
  ModelTrace* trace_;
  Kind kind_ = Kind::kNone;
  size_t start_ = 0;
  size_t end_ = 0;
};

// AArch64's instructions (Insn of AArch64LineOps).
struct ModelDcInsns {
  ModelLines* lines;
  void dc_cvac(uintptr_t a) { lines->clean("dc cvac", a); }
  void dc_ivac(uintptr_t a) { lines->invalidate("dc ivac", a); }
  void dc_civac(uintptr_t a) { lines->clean_invalidate("dc civac", a); }
  void dsb_sy() { lines->barrier("dsb sy"); }
};

// RISC-V's Zicbom instructions (Insn of Riscv64LineOps).
struct ModelCboInsns {
  ModelLines* lines;
  void cbo_clean(uintptr_t a) { lines->clean("cbo.clean", a); }
  void cbo_inval(uintptr_t a) { lines->invalidate("cbo.inval", a); }
  void cbo_flush(uintptr_t a) { lines->clean_invalidate("cbo.flush", a); }
  void fence_rw_rw() { lines->barrier("fence rw,rw"); }
};

// x86-64's instructions (Insn of X86LineOps). CLWB may leave the line cached: a clean.
struct ModelX86Insns {
  ModelLines* lines;
  void clwb(uintptr_t a) { lines->clean("clwb", a); }
  void clflushopt(uintptr_t a) { lines->clean_invalidate("clflushopt", a); }
  void clflush(uintptr_t a) { lines->clean_invalidate("clflush", a); }
  void sfence() { lines->barrier("sfence"); }
  void mfence() { lines->barrier("mfence"); }
};
