// DeviceDma and its move-only RAII types: what drivers use (the dma-api crate's DeviceDma, DBox,
// DArray, buffer pool and single-mapping guard, in C++).
//
// A DeviceDma names one device's constraints (mask, coherence, bus offset) and the platform's
// DmaOp. Every object it hands out gives its resources back in its destructor:
//   StreamingMapping -- a map_single; unmaps when destroyed (or at unmap()).
//   DBox<T>          -- one T in coherent memory.
//   DArray<T>        -- n Ts in coherent memory.
//   DmaBufferPool    -- a fixed set of equal coherent buffers, lent out as PooledBuffer.
// Ownership moves: the CPU owns a streaming buffer before map and after unmap; in between the
// device does, except across sync_for_cpu (CPU may read) / sync_for_device (device may read again).
//
// Calling contexts (dmakit/dma_op.h): whatever allocates or frees coherent memory (alloc_array,
// alloc_box, DArray/DBox reset, destructor and move assignment) has alloc_coherent's context:
// thread only for a device that is not coherent, any for a coherent one. Everything else here
// (map, a StreamingMapping's syncs, unmap, destructor and moves, the accessors, DeviceDma's
// queries and setters, check_no_mappings) is any context.
#pragma once

#include "dmakit/dma_debug.h"
#include "dmakit/dma_op.h"
#include "dmakit/dma_plain.h"
#include "dmakit/support/result.h"
#include "dmakit/support/utility.h"

class DeviceDma;

// A live streaming mapping. Move-only; the destructor unmaps.
class StreamingMapping {
 public:
  StreamingMapping() = default;
  StreamingMapping(DmaOp* op, const DmaMapHandle& h) : op_(op), h_(h) {}
  StreamingMapping(StreamingMapping&& o) : op_(support::exchange(o.op_, nullptr)), h_(o.h_) {}
  StreamingMapping& operator=(StreamingMapping&& o) {
    if (this != &o) {
      unmap();
      op_ = support::exchange(o.op_, nullptr);
      h_ = o.h_;
    }
    return *this;
  }
  StreamingMapping(const StreamingMapping&) = delete;
  StreamingMapping& operator=(const StreamingMapping&) = delete;
  ~StreamingMapping() { unmap(); }

  // Address to program into the device. Precondition: valid().
  DmaAddr dma_addr() const { return h_.dma_addr; }
  size_t size() const { return h_.size; }
  DmaDirection direction() const { return h_.direction; }
  bool bounced() const { return h_.bounced(); }
  bool valid() const { return op_ != nullptr; }
  const DmaMapHandle& handle() const { return h_; }

  // The device wrote [offset, offset + size): make it visible to the CPU (DmaOp::prepare_read).
  // Errors: kOutOfRange, kInvalidArgument (not valid()).
  Result<void> sync_for_cpu(size_t offset, size_t size) {
    if (op_ == nullptr) return ErrorCode::kInvalidArgument;
    return op_->prepare_read(h_, offset, size, h_.direction);
  }
  Result<void> sync_for_cpu() { return sync_for_cpu(0, h_.size); }
  // The CPU wrote [offset, offset + size): make it visible to the device (DmaOp::confirm_write).
  // Errors: kOutOfRange, kInvalidArgument (not valid()).
  Result<void> sync_for_device(size_t offset, size_t size) {
    if (op_ == nullptr) return ErrorCode::kInvalidArgument;
    return op_->confirm_write(h_, offset, size, h_.direction);
  }
  Result<void> sync_for_device() { return sync_for_device(0, h_.size); }

  // Ends the mapping now (the CPU owns the buffer again). Idempotent.
  void unmap() {
    if (op_ != nullptr) {
      op_->unmap_single(h_);
      op_ = nullptr;
    }
  }

 private:
  DmaOp* op_ = nullptr;
  DmaMapHandle h_;
};

// Coherent memory holding `count` objects of T, which the device may read and write at any time.
// DArrayRef<T> is the view (the accessors below, owning nothing); DArray<T> (below) owns the
// memory: move-only, the destructor frees.
//
// T must be plain data (DmaPlain, include/dmakit/dma_plain.h): trivially copyable, standard layout,
// no padding unless kDmaAllowPadding<T> says so. The CPU reaches the memory through read()/write()
// (whole elements) and read_field()/write_field() (one field, or one entry of an array field),
// which the compiler must perform every time they are called: polling a field the device sets
// terminates. There is no operator[] or operator-> handing out a T&: through a plain reference
// the compiler may keep a field in a register across a loop, or merge and drop stores, and
// nothing at the call site would show it. Raw access remains, named as such: raw_data() for
// passing the memory on (a byte buffer handed to a copy routine, a pattern fill), or for CPU-only
// fields when the driver has proven nobody else touches them.
//
// A DArrayRef is trivially copyable and destructible, and constexpr-constructible: a driver that
// keeps its rings for the device's lifetime holds them as statics, `constinit DArrayRef<Desc>
// g_ring;`, filled from DArray::release() (the memory is then nobody's to free until a
// DArray::adopt takes it back). It must not outlive the allocation it shows.
//
// Calling context: the accessors take no locks and are any context; freeing (reset, the
// destructor, move assignment over a live array) is dealloc_coherent's context. Ordering between
// accesses and the device (barriers, sync for non-coherent devices) is the driver's.
template <typename T>
class DArrayRef {
  static_assert(DmaTriviallyCopyable<T>,
                "DArray/DBox: T must be trivially copyable (the device copies its bytes; no "
                "constructors, destructors or virtual functions run for it)");
  static_assert(DmaStandardLayout<T>,
                "DArray/DBox: T must be standard layout (its layout is what the device reads)");
  static_assert(DmaNoPadding<T>,
                "DArray/DBox: T has padding bytes or several representations of a value (float): "
                "name the padding as reserved fields, or specialise kDmaAllowPadding<T> = true");

 public:
  constexpr DArrayRef() = default;
  // A view of the coherent allocation `h` (from alloc_coherent, or DArray::release()) as
  // h.layout.size / sizeof(T) objects of T.
  constexpr explicit DArrayRef(const DmaHandle& h) : h_(h), count_(h.layout.size / sizeof(T)) {}

  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

  // Element i, read now (volatile accesses, include/dmakit/dma_plain.h: each naturally aligned
  // field of up to 8 bytes in one load). Precondition: valid(), i < size() (checked in debug
  // builds).
  T read(size_t i) const { return dma_load(element(i)); }
  // Writes element i now, in address order (one store per naturally aligned field of up to 8
  // bytes). Same preconditions.
  void write(size_t i, const T& v) { dma_store(element(i), v); }

  // One field of element i, read or written now, without copying the rest of the element:
  // `ring.read_field(i, &Completion::done)`. Same preconditions as read()/write().
  template <typename F, typename C>
    requires(DmaFieldOf<F, C, T> && !kDmaIsArray<F>)
  F read_field(size_t i, F C::* field) const {
    return dma_load(&(element(i)->*field));
  }
  template <typename F, typename C>
    requires(DmaFieldOf<F, C, T> && !kDmaIsArray<F>)
  void write_field(size_t i, F C::* field, const typename dma_detail::TypeIdentity<F>::type& v) {
    dma_store(&(element(i)->*field), v);
  }
  // Entry k of an array field of element i: `read_field(0, &Used::ring, k)`.
  // Precondition additionally: k < N (checked in debug builds).
  template <typename F, size_t N, typename C>
    requires DmaFieldOf<F, C, T>
  F read_field(size_t i, F (C::*field)[N], size_t k) const {
    KDEBUG_ASSERT(k < N, "DArray field index out of range");
    return dma_load(&(element(i)->*field)[k]);
  }
  template <typename F, size_t N, typename C>
    requires DmaFieldOf<F, C, T>
  void write_field(size_t i, F (C::*field)[N], size_t k,
                   const typename dma_detail::TypeIdentity<F>::type& v) {
    KDEBUG_ASSERT(k < N, "DArray field index out of range");
    dma_store(&(element(i)->*field)[k], v);
  }

  // The memory itself, for code that knows what it does: plain accesses through this pointer may
  // be cached, merged or dropped by the compiler (see the class comment).
  T* raw_data() { return static_cast<T*>(h_.cpu_addr); }
  const T* raw_data() const { return static_cast<const T*>(h_.cpu_addr); }

  // Device address of element i.
  DmaAddr dma_addr(size_t i = 0) const { return h_.dma_addr + i * sizeof(T); }
  bool valid() const { return h_.cpu_addr != nullptr; }
  const DmaHandle& handle() const { return h_; }

 protected:
  DArrayRef(const DmaHandle& h, size_t count) : h_(h), count_(count) {}

  T* element(size_t i) const {
    KDEBUG_ASSERT(i < count_, "DArray index out of range");
    return static_cast<T*>(h_.cpu_addr) + i;
  }

  DmaHandle h_;
  size_t count_ = 0;
};

// The owner: DArrayRef's accessors, and the memory is freed when the DArray is destroyed or
// reset. Move-only. Converts to a DArrayRef (a view that must not outlive it).
template <typename T>
class DArray : public DArrayRef<T> {
 public:
  constexpr DArray() = default;
  DArray(DmaOp* op, const DmaHandle& h, size_t count) : DArrayRef<T>(h, count), op_(op) {}
  DArray(DArray&& o) : DArrayRef<T>(o.h_, o.count_), op_(support::exchange(o.op_, nullptr)) {}
  DArray& operator=(DArray&& o) {
    if (this != &o) {
      reset();
      op_ = support::exchange(o.op_, nullptr);
      this->h_ = o.h_;
      this->count_ = o.count_;
    }
    return *this;
  }
  DArray(const DArray&) = delete;
  DArray& operator=(const DArray&) = delete;
  ~DArray() { reset(); }

  // Takes ownership of the coherent allocation `h` of `op` (from release(), or from
  // op->alloc_coherent), as h.layout.size / sizeof(T) objects of T. Precondition: nobody else
  // owns or frees it.
  static DArray adopt(DmaOp* op, const DmaHandle& h) {
    return DArray(op, h, h.layout.size / sizeof(T));
  }

  bool valid() const { return op_ != nullptr; }

  // Frees the memory now. Idempotent.
  void reset() {
    if (op_ != nullptr) {
      op_->dealloc_coherent(this->h_);
      op_ = nullptr;
    }
  }

  // Hands the memory over: returns its handle and leaves this DArray empty (valid() false; its
  // destructor frees nothing). The memory stays allocated, for the device's lifetime or until a
  // DArray::adopt (or DmaOp::dealloc_coherent with the handle) frees it; the misuse checker keeps
  // tracking it. On an empty DArray, returns an empty handle (cpu_addr null).
  [[nodiscard]] DmaHandle release() {
    DmaHandle h = op_ != nullptr ? this->h_ : DmaHandle{};
    op_ = nullptr;
    this->h_ = DmaHandle{};
    this->count_ = 0;
    return h;
  }

 private:
  DmaOp* op_ = nullptr;
};

// One T in coherent memory, with DArray's rules and accessors (for element 0). Move-only; the
// destructor frees.
template <typename T>
class DBox {
 public:
  constexpr DBox() = default;
  explicit DBox(DArray<T>&& a) : a_(support::move(a)) {}

  // See DArray::read / write / read_field / write_field. Precondition: valid().
  T read() const { return a_.read(0); }
  void write(const T& v) { a_.write(0, v); }
  template <typename F, typename C>
    requires(DmaFieldOf<F, C, T> && !kDmaIsArray<F>)
  F read_field(F C::* field) const {
    return a_.read_field(0, field);
  }
  template <typename F, typename C>
    requires(DmaFieldOf<F, C, T> && !kDmaIsArray<F>)
  void write_field(F C::* field, const typename dma_detail::TypeIdentity<F>::type& v) {
    a_.write_field(0, field, v);
  }
  template <typename F, size_t N, typename C>
    requires DmaFieldOf<F, C, T>
  F read_field(F (C::*field)[N], size_t k) const {
    return a_.read_field(0, field, k);
  }
  template <typename F, size_t N, typename C>
    requires DmaFieldOf<F, C, T>
  void write_field(F (C::*field)[N], size_t k,
                   const typename dma_detail::TypeIdentity<F>::type& v) {
    a_.write_field(0, field, k, v);
  }

  // The object itself; plain accesses through it may be cached by the compiler (see DArray).
  T* raw() { return a_.raw_data(); }
  const T* raw() const { return a_.raw_data(); }

  DmaAddr dma_addr() const { return a_.dma_addr(0); }
  bool valid() const { return a_.valid(); }
  void reset() { a_.reset(); }
  // See DArray::release and DArray::adopt; a DArrayRef<T> of the handle reaches the object.
  [[nodiscard]] DmaHandle release() { return a_.release(); }
  static DBox adopt(DmaOp* op, const DmaHandle& h) { return DBox(DArray<T>::adopt(op, h)); }

 private:
  DArray<T> a_;
};

// The per-device handle: constraints plus the platform's DmaOp. Cheap to copy; it owns nothing.
// Each constructed DeviceDma is one device for the misuse checker (include/dmakit/dma_debug.h): it
// gets a fresh DmaConstraints::device_id, which its copies share. A driver calls
// check_no_mappings() when it tears its device down.
class DeviceDma {
 public:
  DeviceDma() = default;
  // A device with these constraints; DmaCoherence::kPlatformDefault becomes the platform's
  // coherence (op->default_constraints()), so constraints().coherence is always kCoherent or
  // kNonCoherent. Precondition: op non-null and outliving the device.
  DeviceDma(DmaOp* op, const DmaConstraints& c) : op_(op), c_(c) {
    if (c_.coherence == DmaCoherence::kPlatformDefault) {
      c_.coherence = op->default_constraints().coherence;
    }
    c_.device_id = DmaDebug::new_device_id();
  }
  // A device with the platform's default coherence and this mask.
  DeviceDma(DmaOp* op, uint64_t dma_mask) : op_(op), c_(op->default_constraints()) {
    c_.dma_mask = dma_mask;
    c_.device_id = DmaDebug::new_device_id();
  }

  DmaOp* op() const { return op_; }
  const DmaConstraints& constraints() const { return c_; }
  // The alignment at which a buffer shares no cache line with other data: kFromDevice and
  // kBidirectional buffers of a non-coherent device aligned and sized to it are mapped directly,
  // others are bounced whole (DmaOp::cache_alignment). Any context.
  size_t cache_alignment() const { return op_->cache_alignment(); }
  // The largest streaming mapping map() can make for this device (DmaOp::max_mapping_size).
  // Any context.
  size_t max_mapping_size() const { return op_->max_mapping_size(c_); }
  uint64_t dma_mask() const { return c_.dma_mask; }
  // Whether the device snoops the CPU caches (its own coherence, or the platform's).
  bool coherent() const { return c_.coherence == DmaCoherence::kCoherent; }
  // Overrides (a driver that knows better, or a test).
  void set_coherent(bool coherent) { c_.coherence = dma_coherence(coherent); }
  void set_force_bounce(bool force) { c_.force_bounce = force; }
  void set_min_align_mask(uint64_t m) { c_.min_align_mask = m; }
  void set_dma_mask(uint64_t mask) { c_.dma_mask = mask; }
  // The name diagnostics print (a string that outlives the device), may be null.
  void set_name(const char* name) { c_.name = name; }
  const char* name() const { return c_.name; }

  // Maps [addr, addr + size) for `dir`; see DmaOp::map_single for the contract and errors.
  // `site` records the caller's file:line for the checker's leak reports (leave it defaulted).
  // In the debug build the result reports itself (kErrorIgnored) if it holds an error that the
  // caller never looked at; otherwise it is a plain Result.
  DmaMapResult<StreamingMapping> map(void* addr, size_t size, DmaDirection dir, size_t align = 0,
                                     DmaCallSite site = DmaCallSite::current()) {
    auto h = op_->map_single(c_, addr, size, align, dir);
    if (!h.ok()) return dma_map_failure<StreamingMapping>(h.error(), c_, addr, size, dir);
    DmaDebug::note_call_site(op_, h->dma_addr, c_.device_id, site);
    return StreamingMapping(op_, *h);
  }

  // `count` zeroed objects of T in coherent memory; see DmaOp::alloc_coherent for the errors
  // (plus kLayoutError when count * sizeof(T) overflows or count is 0).
  template <typename T>
  Result<DArray<T>> alloc_array(size_t count, size_t align = alignof(T),
                                DmaCallSite site = DmaCallSite::current()) {
    if (count == 0 || count > ~size_t{0} / sizeof(T)) return ErrorCode::kLayoutError;
    TRY_ASSIGN(DmaHandle h, op_->alloc_coherent(c_, Layout{count * sizeof(T), align}));
    DmaDebug::note_call_site(op_, h.dma_addr, c_.device_id, site);
    return DArray<T>(op_, h, count);
  }

  // One zeroed T in coherent memory.
  template <typename T>
  Result<DBox<T>> alloc_box(DmaCallSite site = DmaCallSite::current()) {
    TRY_ASSIGN(DArray<T> a, alloc_array<T>(1, alignof(T), site));
    return DBox<T>(support::move(a));
  }

  // Teardown check: with the misuse checker, reports (kLeakAtTeardown, one line each, with where
  // each was made) every streaming mapping and coherent allocation of this device that is still
  // live, and returns how many there are; they stay live. Returns 0 without the checker, or for
  // a default-constructed device. Any context; O(checker table size).
  size_t check_no_mappings() const { return DmaDebug::check_device_teardown(c_); }

 private:
  DmaOp* op_ = nullptr;
  DmaConstraints c_;
};
