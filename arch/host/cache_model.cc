#include "arch/host/cache_model.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "support/assert.h"

namespace {

uint8_t* zero_pages(size_t size) {
  void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  KASSERT(m != MAP_FAILED, "mmap for the cache model failed");
  return static_cast<uint8_t*>(m);
}

}  // namespace

CacheModel::CacheModel(uint8_t* cpu, size_t size, size_t line)
    : cpu_(cpu), size_(size), line_(line), memory_(zero_pages(size)), synced_(zero_pages(size)) {
  KASSERT(line != 0 && (line & (line - 1)) == 0, "line size must be a power of two");
  KASSERT(size % line == 0, "region must be whole lines");
}

CacheModel::~CacheModel() {
  munmap(memory_, size_);
  munmap(synced_, size_);
}

template <typename F>
void CacheModel::for_lines(size_t off, size_t len, F f) {
  if (len == 0) return;
  KASSERT(off < size_ && len <= size_ - off, "cache operation outside the modelled memory");
  size_t first = off & ~(line_ - 1);
  size_t end = off + len;
  for (size_t l = first; l < end; l += line_) f(l);
}

void CacheModel::clean_line(size_t l) {
  if (uncached(l)) {
    // Only a stale line can be in the cache: written back over memory (which the CPU reads).
    auto it = stale_.find(l);
    if (it != stale_.end()) {
      std::memcpy(cpu_ + l, it->second.data(), line_);
      std::memcpy(memory_ + l, it->second.data(), line_);
      std::memcpy(synced_ + l, it->second.data(), line_);
      stale_.erase(it);
    }
    return;
  }
  if (std::memcmp(cpu_ + l, synced_ + l, line_) != 0) {
    std::memcpy(memory_ + l, cpu_ + l, line_);
  }
  std::memcpy(synced_ + l, cpu_ + l, line_);
}

void CacheModel::invalidate_line(size_t l) {
  if (uncached(l)) {
    stale_.erase(l);  // Memory, which the CPU reads, is untouched.
    return;
  }
  std::memcpy(cpu_ + l, memory_ + l, line_);
  std::memcpy(synced_ + l, memory_ + l, line_);
}

void CacheModel::clean(size_t off, size_t len) {
  for_lines(off, len, [this](size_t l) {
    clean_line(l);
    ++counters_.cleans;
  });
}

void CacheModel::invalidate(size_t off, size_t len) {
  for_lines(off, len, [this](size_t l) {
    invalidate_line(l);
    ++counters_.invalidates;
  });
}

void CacheModel::clean_invalidate(size_t off, size_t len) {
  for_lines(off, len, [this](size_t l) {
    clean_line(l);
    invalidate_line(l);
    ++counters_.clean_invalidates;
  });
}

void CacheModel::evict_all() {
  for (size_t l = 0; l < size_; l += line_) clean_line(l);
}

void CacheModel::device_read(size_t off, void* dst, size_t len, bool coherent) const {
  if (len == 0) return;
  KASSERT(off < size_ && len <= size_ - off, "device read outside the modelled memory");
  // Page by page: an uncached page's memory is what the CPU wrote (cpu_).
  auto* out = static_cast<uint8_t*>(dst);
  while (len > 0) {
    size_t n = std::min(len, kPageSize - (off % kPageSize));
    std::memcpy(out, (coherent || uncached(off) ? cpu_ : memory_) + off, n);
    out += n;
    off += n;
    len -= n;
  }
}

void CacheModel::device_write(size_t off, const void* src, size_t len, bool coherent) {
  if (len == 0) return;
  KASSERT(off < size_ && len <= size_ - off, "device write outside the modelled memory");
  const auto* in = static_cast<const uint8_t*>(src);
  while (len > 0) {
    size_t n = std::min(len, kPageSize - (off % kPageSize));
    std::memcpy(memory_ + off, in, n);
    if (coherent || uncached(off)) {
      // A snooping write updates (or invalidates) the cached copy, and an uncached page has none:
      // the CPU sees it at once.
      std::memcpy(cpu_ + off, in, n);
      std::memcpy(synced_ + off, in, n);
    }
    in += n;
    off += n;
    len -= n;
  }
}

void CacheModel::set_uncached(size_t off, size_t len, bool make_uncached) {
  KASSERT(off % kPageSize == 0 && len % kPageSize == 0, "set_uncached: not whole pages");
  KASSERT(line_ <= kPageSize, "set_uncached: lines larger than a page");
  KASSERT(off < size_ && len <= size_ - off, "set_uncached outside the modelled memory");
  for (size_t page = off; page < off + len; page += kPageSize) {
    if (uncached(page) == make_uncached) continue;
    for (size_t l = page; l < page + kPageSize; l += line_) {
      if (make_uncached) {
        // A dirty line stays in the cache; the CPU now reads memory.
        if (std::memcmp(cpu_ + l, synced_ + l, line_) != 0) {
          stale_[l].assign(cpu_ + l, cpu_ + l + line_);
        }
        std::memcpy(cpu_ + l, memory_ + l, line_);
        std::memcpy(synced_ + l, memory_ + l, line_);
      } else {
        // What was written uncached is memory; a stale line is the CPU's view again (dirty).
        std::memcpy(memory_ + l, cpu_ + l, line_);
        std::memcpy(synced_ + l, cpu_ + l, line_);
        auto it = stale_.find(l);
        if (it != stale_.end()) {
          std::memcpy(cpu_ + l, it->second.data(), line_);
          stale_.erase(it);
        }
      }
    }
    if (make_uncached) {
      uncached_pages_.insert(page / kPageSize);
    } else {
      uncached_pages_.erase(page / kPageSize);
    }
  }
}
