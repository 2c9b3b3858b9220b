// CacheModel: what a device would see of a region of simulated physical memory behind a
// non-coherent, write-back CPU cache. The host build cannot observe real caches (and QEMU models
// none), so tests run the DMA layer against this model instead.
//
// Three byte arrays of the region's size:
//   cpu_    -- the CPU's view: the memory the host process really reads and writes;
//   memory_ -- what a device sees (DRAM behind the cache);
//   synced_ -- the CPU's view as of the line's last synchronisation with memory.
// A line is dirty when the CPU stored to it since it was last synchronised (cleaned or
// invalidated), whatever it stored: hardware marks a line dirty on a store, not on a change, so a
// store that writes back the value already there still makes the next write-back overwrite
// memory. How stores are seen, see "Tracking CPU stores" below.
//   clean(line):      if dirty, memory_ = cpu_; then synced_ = cpu_.       (dc cvac, cbo.clean)
//   invalidate(line): cpu_ = memory_, synced_ = memory_; dirty data lost.  (dc ivac, cbo.inval)
//   clean+invalidate: clean, then invalidate.                              (dc civac, cbo.flush)
//   evict_all():      the cache writes every dirty line back at a moment of its choosing.
// A device access of a non-coherent device reads and writes memory_; a coherent device's access
// reads the CPU view (snoop) and writes both views (the line ends clean).
// Everything is whole lines, as in hardware: a forgotten sync reads stale data, an invalidate
// of a shared partial line without a clean loses the neighbour's bytes.
//
// Uncached pages (set_uncached: the CPU maps them non-cacheable, as KernelDmaOp::alloc_coherent
// does for a non-coherent device): the CPU's loads and stores go straight to memory, so for them
// cpu_ *is* memory: a device reads and writes cpu_ directly, coherent or not, and no sync is
// needed either way. Making a page uncached shows what hardware does to the cache's contents:
//   - the CPU now reads memory, so cpu_ takes memory_'s bytes: a dirty line that was not cleaned
//     first is no longer visible to the CPU...
//   - ...but it is still in the cache (kept here as a "stale" line), and a later clean or
//     eviction writes it back over memory -- over what the CPU or the device wrote uncached
//     since; an invalidate discards it.
// Making the page cacheable again: memory_ takes the bytes written uncached, and a stale line
// still in the cache becomes the CPU's (dirty) view again.
//
// Tracking CPU stores (Tracking::kStores, what HostPlatform uses). The host process writes the
// CPU view through ordinary pointers (the library's memcpy, the tests), so stores are caught by
// the MMU: from the first maintenance of a page on (a clean, invalidate, eviction or a return
// from uncached), the model keeps the page read-only while any of its lines is clean. A store to
// it faults; the SIGSEGV handler marks the lines the store writes dirty (one bit per line; the
// store's width is decoded for the moves that reach simulated RAM: mov, SSE, AVX and AVX-512
// stores), makes the page writable and sets the trap flag in the saved context, and the SIGTRAP
// after that one
// instruction write-protects the page again, unless every line of it is now dirty (then stores
// to it need no tracking until the next maintenance). A `rep movs` / `rep stos` (glibc's memcpy
// and memset of a few KiB) would trap once per element; the handler performs it instead, marking
// every line of the destination dirty. The model's own writes to the CPU view (an invalidate
// reloading a line, a snooping device write) go through /proc/self/mem, which ignores the
// protection, so they neither fault nor open a page to other threads.
// Value comparison stays as a second source of dirtiness (cpu_ != synced_), and is the only one
// for a page never maintained (fresh RAM nobody synced: the benchmarks' coherent platforms never
// pay for tracking) and in Tracking::kValues (memory the model may not write-protect).
// Cost: a caught store costs two signals and two mprotect calls (about 40 us on the test
// machine); a store to a page whose lines are all dirty, or never maintained, costs nothing. The
// host suite catches about 3,600 stores (some 0.15 s of its run).
// Limits: (1) while one thread single-steps its store, the page is writable for every thread: a
// store by another thread to another clean line of that page during that instruction is seen
// only by value comparison. Tests that share a page between threads' buffers can miss a
// same-value store there; buffers of their own pages (page-frame allocations) cannot. (2) Stores
// by the kernel on the process's behalf (read(2) into simulated RAM) do not fault and are seen
// by value only. (3) A store instruction the decoder does not know dirties the faulting line,
// and the following 64 bytes only if their value changed. (4) Stores inside a page all of whose
// lines are dirty are not seen, which is right until its next maintenance re-protects it.
// (5) x86-64 Linux only (the trap flag, the saved registers, the instruction decoder).
//
// Threading: every public method may be called from any thread; one lock guards the model's
// state (the dirty bits are atomics, which the signal handlers update without it). Handlers are
// allocation-free and async-signal-safe, and chain to the previous handler for any fault outside
// a tracked model.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "dmakit/support/spinlock.h"
#include "dmakit/support/thread_annotations.h"

// A std::mutex that clang's -Wthread-safety understands (support::Guard locks it).
class TA_CAPABILITY("mutex") ModelMutex {
 public:
  void lock() TA_ACQ() { m_.lock(); }
  void unlock() TA_REL() { m_.unlock(); }

 private:
  std::mutex m_;
};

class CacheModel {
 public:
  enum class Tracking : uint8_t {
    // Dirty = the CPU view differs from the last synchronised one. For CPU memory the model may
    // not write-protect (not page aligned, shared with other data).
    kValues,
    // CPU stores are caught by write protection (above); value comparison besides.
    kStores,
  };

  // cpu: the CPU-visible bytes (owned by the caller, all zero at this point, as fresh RAM from
  // the simulator is), size bytes, line: power of two. kStores: cpu and size page aligned, the
  // pages used for nothing else while the model lives (it write-protects them), and at most
  // kMaxTrackedModels such models at once. The destructor makes the pages writable again.
  CacheModel(uint8_t* cpu, size_t size, size_t line, Tracking tracking = Tracking::kValues);
  ~CacheModel();
  CacheModel(const CacheModel&) = delete;
  CacheModel& operator=(const CacheModel&) = delete;

  static constexpr size_t kMaxTrackedModels = 16;

  size_t line_size() const { return line_; }
  Tracking tracking() const { return tracking_; }
  // Offsets are relative to the start of the region; [off, off + len) must lie inside.
  void clean(size_t off, size_t len) TA_EXCL(mu_);
  void invalidate(size_t off, size_t len) TA_EXCL(mu_);
  void clean_invalidate(size_t off, size_t len) TA_EXCL(mu_);
  void evict_all() TA_EXCL(mu_);

  void device_read(size_t off, void* dst, size_t len, bool coherent) const TA_EXCL(mu_);
  void device_write(size_t off, const void* src, size_t len, bool coherent) TA_EXCL(mu_);

  // Uncached pages (see above). off and len must be multiples of kPageSize inside the region.
  static constexpr size_t kPageSize = 4096;
  void set_uncached(size_t off, size_t len, bool uncached) TA_EXCL(mu_);
  bool uncached(size_t off) const TA_EXCL(mu_);
  size_t uncached_pages() const TA_EXCL(mu_);
  // Dirty lines hidden in the cache behind an uncached mapping (see above).
  size_t stale_lines() const TA_EXCL(mu_);

  // Whether the line holding byte `off` is dirty now (a tracked store, or a changed value).
  bool line_dirty(size_t off) const TA_EXCL(mu_);
  // Stores the write protection caught (faults taken, rep string stores performed), ever.
  uint64_t caught_stores() const { return caught_stores_.load(std::memory_order_relaxed); }

  // Counters of line operations, for tests that check maintenance was (not) done.
  struct Counters {
    uint64_t cleans = 0;
    uint64_t invalidates = 0;
    uint64_t clean_invalidates = 0;
  };
  Counters counters() const TA_EXCL(mu_);
  void reset_counters() TA_EXCL(mu_);

 private:
  friend struct StoreTracker;  // The signal handlers (cache_model.cc).

  // Page states for the signal handlers (atomics: read and changed without the lock).
  static constexpr uint8_t kTracked = 1;    // Maintained at least once: stores are tracked.
  static constexpr uint8_t kProtected = 2;  // Write-protected now.
  static constexpr uint8_t kUncachedPage = 4;

  void clean_line(size_t line_off) TA_REQ(mu_);
  void invalidate_lines(size_t off, size_t len, bool clean_first) TA_REQ(mu_);
  bool dirty_locked(size_t line_off) const TA_REQ(mu_);
  template <typename F>
  void for_lines(size_t off, size_t len, F f) TA_REQ(mu_);
  bool uncached_locked(size_t off) const TA_REQ(mu_) {
    return uncached_pages_.contains(off / kPageSize);
  }
  // Writes the CPU view without tripping the write protection.
  void write_cpu(size_t off, const void* src, size_t len) TA_REQ(mu_);
  // Store tracking: the dirty bit of a line; a page's protection after maintenance.
  void set_dirty_bit(size_t line_off);
  void mark_stored(size_t off, size_t len);  // Every line of [off, off + len) dirty.
  bool clear_dirty_bit(size_t line_off);     // Returns the bit it cleared.
  bool dirty_bit(size_t line_off) const;
  bool page_has_clean_line(size_t page_off) const;
  void track_pages(size_t off, size_t len) TA_REQ(mu_);
  void protect(size_t off, size_t len, bool writable_too) const;

  uint8_t* cpu_;
  size_t size_;
  size_t line_;
  Tracking tracking_;
  mutable ModelMutex mu_;
  // Lazily committed zero pages, so large sparse regions cost only what is touched.
  uint8_t* memory_ TA_PT_GUARDED(mu_);
  uint8_t* synced_ TA_PT_GUARDED(mu_);
  // kStores only: one bit per line, one state byte per page (lazily committed too).
  std::atomic<uint64_t>* dirty_bits_ = nullptr;
  std::atomic<uint8_t>* page_state_ = nullptr;
  std::atomic<uint64_t> caught_stores_{0};
  Counters counters_ TA_GUARDED(mu_);
  std::unordered_set<size_t> uncached_pages_ TA_GUARDED(mu_);               // Page indices.
  std::unordered_map<size_t, std::vector<uint8_t>> stale_ TA_GUARDED(mu_);  // Line -> bytes.
};
