// The boot-time memory planner; the scheme and its cost are described in boot_memory.h.
#include "testkernel/boot_memory.h"

#include "dmakit/support/bitops.h"

namespace {

constexpr uint64_t kPage = 4096;

struct Interval {
  uint64_t lo;
  uint64_t hi;  // exclusive
};

Interval page_rounded_out(const PhysRange& r) {
  uint64_t lo = support::align_down(r.base.value(), kPage);
  uint64_t end = r.base.value() + r.size;
  if (end < r.base.value()) end = ~0ull;  // Wraps: reserve to the top.
  uint64_t hi = end > ~0ull - (kPage - 1) ? ~0ull : support::align_up(end, kPage);
  return {lo, hi};
}

}  // namespace

Result<void> BootMemory::init(support::Span<const PhysRange> ram,
                              support::Span<const PhysRange> reserved, const char* what) {
  if (ram.empty() || ram.size() > kMaxRam || reserved.size() > kMaxReserved) {
    return ErrorCode::kInvalidArgument;
  }
  for (size_t i = 0; i < ram.size(); ++i) {
    if (ram[i].size == 0 || support::add_overflows(ram[i].base.value(), ram[i].size)) {
      return ErrorCode::kInvalidArgument;
    }
    for (size_t j = 0; j < i; ++j) {
      if (ram[i].base < ram[j].end() && ram[j].base < ram[i].end()) {
        return ErrorCode::kInvalidArgument;
      }
    }
    ram_[i] = ram[i];
  }
  num_ram_ = ram.size();
  for (size_t i = 0; i < reserved.size(); ++i) {
    reserved_[i] = reserved[i];
    what_[i] = what;
  }
  num_reserved_ = reserved.size();
  return support::ok();
}

const PhysRange* BootMemory::collision(uint64_t base, uint64_t size) const {
  for (size_t i = 0; i < num_reserved_; ++i) {
    if (reserved_[i].size == 0) continue;
    Interval r = page_rounded_out(reserved_[i]);
    if (base < r.hi && r.lo < base + size) return &reserved_[i];
  }
  return nullptr;
}

Result<PhysAddr> BootMemory::find(uint64_t size, uint64_t align, uint64_t window_lo,
                                  uint64_t window_hi, Placement where) const {
  if (size == 0 || !support::is_pow2(align) || align < kPage) return ErrorCode::kLayoutError;
  size = support::align_up(size, kPage);
  bool found = false;
  uint64_t best = 0;
  for (size_t i = 0; i < num_ram_; ++i) {
    // Usable part of this range: whole pages inside the window.
    uint64_t lo = support::max(support::align_up(ram_[i].base.value(), kPage), window_lo);
    uint64_t hi = support::min(support::align_down(ram_[i].end().value(), kPage), window_hi);
    if (hi <= lo || hi - lo < size) continue;
    if (where == Placement::kLowest) {
      uint64_t cand = support::align_up(lo, align);
      while (cand >= lo && cand <= hi && hi - cand >= size) {
        const PhysRange* c = collision(cand, size);
        if (c == nullptr) {
          if (!found || cand < best) best = cand;
          found = true;
          break;
        }
        Interval r = page_rounded_out(*c);
        if (r.hi == ~0ull) break;
        cand = support::align_up(r.hi, align);
      }
    } else {
      uint64_t top = hi;
      while (top >= lo && top - lo >= size) {
        uint64_t cand = support::align_down(top - size, align);
        if (cand < lo) break;
        const PhysRange* c = collision(cand, size);
        if (c == nullptr) {
          if (!found || cand > best) best = cand;
          found = true;
          break;
        }
        top = page_rounded_out(*c).lo;
      }
    }
  }
  if (!found) return ErrorCode::kNoMemory;
  return PhysAddr(best);
}

Result<void> BootMemory::reserve(PhysRange r, const char* what) {
  if (num_reserved_ == kMaxReserved) return ErrorCode::kNoMemory;
  reserved_[num_reserved_] = r;
  what_[num_reserved_] = what;
  ++num_reserved_;
  return support::ok();
}

Result<PhysAddr> BootMemory::carve(uint64_t size, uint64_t align, uint64_t window_lo,
                                   uint64_t window_hi, Placement where, const char* what) {
  TRY_ASSIGN(PhysAddr base, find(size, align, window_lo, window_hi, where));
  PhysRange r;
  r.base = base;
  r.size = support::align_up(size, kPage);
  TRY(reserve(r, what));
  return base;
}

uint64_t BootMemory::free_bytes_in(uint64_t window_lo, uint64_t window_hi) const {
  uint64_t total = 0;
  for (size_t i = 0; i < num_ram_; ++i) {
    uint64_t lo = support::max(support::align_up(ram_[i].base.value(), kPage), window_lo);
    uint64_t hi = support::min(support::align_down(ram_[i].end().value(), kPage), window_hi);
    // Walk the pages' complement of the reserved set: split [lo, hi) at reserved intervals.
    uint64_t pos = lo;
    while (pos < hi) {
      // The reserved interval starting lowest at or after pos (or covering pos).
      uint64_t next_lo = hi;
      uint64_t next_hi = hi;
      bool any = false;
      for (size_t j = 0; j < num_reserved_; ++j) {
        if (reserved_[j].size == 0) continue;
        Interval r = page_rounded_out(reserved_[j]);
        if (r.hi <= pos || r.lo >= hi) continue;
        uint64_t s = support::max(r.lo, pos);
        if (!any || s < next_lo || (s == next_lo && r.hi > next_hi)) {
          next_lo = s;
          next_hi = support::min(r.hi, hi);
          any = true;
        }
      }
      total += next_lo - pos;
      pos = any ? next_hi : hi;
    }
  }
  return total;
}

uint64_t BootMemory::ram_bytes() const {
  uint64_t t = 0;
  for (size_t i = 0; i < num_ram_; ++i) t += ram_[i].size;
  return t;
}
