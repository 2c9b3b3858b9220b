// CacheModel: what a device would see of a region of simulated physical memory behind a
// non-coherent, write-back CPU cache. The host build cannot observe real caches (and QEMU models
// none), so tests run the DMA layer against this model instead.
//
// Three byte arrays of the region's size:
//   cpu_    -- the CPU's view: the memory the host process really reads and writes;
//   memory_ -- what a device sees (DRAM behind the cache);
//   synced_ -- the CPU's view as of the line's last synchronisation with memory.
// A line is dirty when the CPU changed it since it was last synchronised (cpu_ != synced_).
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
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <vector>

class CacheModel {
 public:
  // cpu: the CPU-visible bytes (owned by the caller, all zero at this point, as fresh RAM from
  // the simulator is), size bytes, line: power of two.
  CacheModel(uint8_t* cpu, size_t size, size_t line);
  ~CacheModel();
  CacheModel(const CacheModel&) = delete;
  CacheModel& operator=(const CacheModel&) = delete;

  size_t line_size() const { return line_; }
  // Offsets are relative to the start of the region; [off, off + len) must lie inside.
  void clean(size_t off, size_t len);
  void invalidate(size_t off, size_t len);
  void clean_invalidate(size_t off, size_t len);
  void evict_all();

  void device_read(size_t off, void* dst, size_t len, bool coherent) const;
  void device_write(size_t off, const void* src, size_t len, bool coherent);

  // Uncached pages (see above). off and len must be multiples of kPageSize inside the region.
  static constexpr size_t kPageSize = 4096;
  void set_uncached(size_t off, size_t len, bool uncached);
  bool uncached(size_t off) const { return uncached_pages_.count(off / kPageSize) != 0; }
  size_t uncached_pages() const { return uncached_pages_.size(); }
  // Dirty lines hidden in the cache behind an uncached mapping (see above).
  size_t stale_lines() const { return stale_.size(); }

  // Counters of line operations, for tests that check maintenance was (not) done.
  struct Counters {
    uint64_t cleans = 0;
    uint64_t invalidates = 0;
    uint64_t clean_invalidates = 0;
  };
  const Counters& counters() const { return counters_; }
  void reset_counters() { counters_ = {}; }

 private:
  void clean_line(size_t line_off);
  void invalidate_line(size_t line_off);
  template <typename F>
  void for_lines(size_t off, size_t len, F f);

  uint8_t* cpu_;
  size_t size_;
  size_t line_;
  // Lazily committed zero pages, so large sparse regions cost only what is touched.
  uint8_t* memory_;
  uint8_t* synced_;
  Counters counters_;
  std::unordered_set<size_t> uncached_pages_;               // Page indices.
  std::unordered_map<size_t, std::vector<uint8_t>> stale_;  // Line offset -> its dirty bytes.
};
