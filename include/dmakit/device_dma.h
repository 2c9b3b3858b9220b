// DeviceDma and its move-only RAII types: what drivers use (the dma-api crate's DeviceDma, DBox,
// DArray, buffer pool and single-mapping guard, in C++).
//
// A DeviceDma names one device's constraints (mask, coherence, bus offset) and the platform's
// DmaOp. Every object it hands out gives its resources back in its destructor:
//   StreamingMapping -- a map_single; unmaps when destroyed (or at unmap()).
//   DBox<T>          -- one T in coherent memory.
//   DArray<T>        -- n Ts in coherent memory.
//   ContiguousArray<T>, ContiguousBox<T> -- cacheable memory owned in turn through range syncs
//                       (alloc_noncoherent; Linux's dma_alloc_noncoherent).
//   DmaBufferPool    -- a fixed set of equal buffers, lent out as PooledBuffer.
// DeviceDma also negotiates the streaming and coherent masks (set_dma_mask_and_coherent), answers
// the sizing queries (max_mapping_size, opt_mapping_size, cache_alignment, need_sync,
// required_mask, addressing_limited), maps with attributes (map_attrs), by physical page
// (map_page) and another device's MMIO (map_resource), and holds DMA windows (set_dma_windows).
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

// Contiguous memory the CPU keeps cached, owned by the CPU and the device in turn (the crate's
// ContiguousArray, Linux's dma_alloc_noncoherent): from DeviceDma::alloc_noncoherent. Unlike a
// DArray, the CPU reaches it with plain accesses (operator[], data()) at full cache speed, and
// ownership moves by explicit syncs over byte ranges:
//   sync_for_device(offset, size, dir): the CPU wrote (or merely owned) those bytes and the
//     device accesses them next. Cleans them from the caches (every direction: no dirty line the
//     CPU left may be evicted later over what the device writes).
//   sync_for_cpu(offset, size, dir): the device wrote those bytes and the CPU reads them next.
//     Invalidates them for kFromDevice / kBidirectional; nothing for kToDevice.
// For a device that snoops both are free. Between a sync_for_device and the matching sync_for_cpu
// the CPU must not touch the bytes (not even read them: a speculative read refills the line).
// Allocation is page aligned and whole pages, so a range sync shares no line with other data;
// two ranges of one array that the CPU and device own at once must not share a cache line
// (DeviceDma::cache_alignment()).
// T must be trivially copyable (the device copies its bytes). Move-only; the destructor frees
// (DmaOp::dealloc_noncoherent: any context, unless the DmaOp fell back to coherent memory).
// After allocation the memory is zeroed, clean, and the CPU's.
template <typename T>
class ContiguousArray {
  static_assert(DmaTriviallyCopyable<T>,
                "ContiguousArray: T must be trivially copyable (the device copies its bytes)");

 public:
  constexpr ContiguousArray() = default;
  // Takes ownership of `h` (from op->alloc_noncoherent) as `count` objects of T.
  ContiguousArray(DmaOp* op, const DmaHandle& h, size_t count) : op_(op), h_(h), count_(count) {}
  ContiguousArray(ContiguousArray&& o)
      : op_(support::exchange(o.op_, nullptr)), h_(o.h_), count_(o.count_) {}
  ContiguousArray& operator=(ContiguousArray&& o) {
    if (this != &o) {
      reset();
      op_ = support::exchange(o.op_, nullptr);
      h_ = o.h_;
      count_ = o.count_;
    }
    return *this;
  }
  ContiguousArray(const ContiguousArray&) = delete;
  ContiguousArray& operator=(const ContiguousArray&) = delete;
  ~ContiguousArray() { reset(); }

  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }
  // Element i. Precondition: valid(), i < size() (checked in debug builds), and the CPU owns it.
  T& operator[](size_t i) {
    KDEBUG_ASSERT(i < count_, "ContiguousArray index out of range");
    return data()[i];
  }
  const T& operator[](size_t i) const {
    KDEBUG_ASSERT(i < count_, "ContiguousArray index out of range");
    return data()[i];
  }
  T* data() { return static_cast<T*>(h_.cpu_addr); }
  const T* data() const { return static_cast<const T*>(h_.cpu_addr); }
  // Device address of element i.
  DmaAddr dma_addr(size_t i = 0) const { return h_.dma_addr + i * sizeof(T); }
  bool valid() const { return op_ != nullptr; }
  const DmaHandle& handle() const { return h_; }

  // Bytes [offset, offset + size) go to the device / come back to the CPU (see the class
  // comment). Errors: kOutOfRange (range not inside bytes()), kInvalidArgument (not valid());
  // nothing is synced then. Any context.
  Result<void> sync_for_device(size_t offset, size_t size,
                               DmaDirection dir = DmaDirection::kBidirectional) {
    return sync(offset, size, dir, DmaSyncTarget::kForDevice);
  }
  Result<void> sync_for_cpu(size_t offset, size_t size,
                            DmaDirection dir = DmaDirection::kBidirectional) {
    return sync(offset, size, dir, DmaSyncTarget::kForCpu);
  }
  // The whole array.
  Result<void> sync_for_device(DmaDirection dir = DmaDirection::kBidirectional) {
    return sync_for_device(0, bytes(), dir);
  }
  Result<void> sync_for_cpu(DmaDirection dir = DmaDirection::kBidirectional) {
    return sync_for_cpu(0, bytes(), dir);
  }

  // Frees the memory now. Idempotent.
  void reset() {
    if (op_ != nullptr) {
      op_->dealloc_noncoherent(h_);
      op_ = nullptr;
    }
  }
  // Hands the memory over (freed later by DmaOp::dealloc_noncoherent with the handle); leaves
  // this empty. An empty array returns an empty handle.
  [[nodiscard]] DmaHandle release() {
    DmaHandle h = op_ != nullptr ? h_ : DmaHandle{};
    op_ = nullptr;
    h_ = DmaHandle{};
    count_ = 0;
    return h;
  }

 private:
  Result<void> sync(size_t offset, size_t size, DmaDirection dir, DmaSyncTarget target) {
    if (op_ == nullptr) return ErrorCode::kInvalidArgument;
    if (offset > bytes() || size > bytes() - offset) return ErrorCode::kOutOfRange;
    return op_->sync_noncoherent(h_, offset, size, dir, target);
  }

  DmaOp* op_ = nullptr;
  DmaHandle h_;
  size_t count_ = 0;
};

// One T in cacheable DMA memory, with ContiguousArray's rules (the crate's ContiguousBox).
template <typename T>
class ContiguousBox {
 public:
  constexpr ContiguousBox() = default;
  explicit ContiguousBox(ContiguousArray<T>&& a) : a_(support::move(a)) {}

  // The object. Precondition: valid(), and the CPU owns it.
  T& operator*() { return a_[0]; }
  const T& operator*() const { return a_[0]; }
  T* operator->() { return a_.data(); }
  const T* operator->() const { return a_.data(); }
  T* get() { return a_.data(); }

  DmaAddr dma_addr() const { return a_.dma_addr(0); }
  bool valid() const { return a_.valid(); }
  // See ContiguousArray; the whole object.
  Result<void> sync_for_device(DmaDirection dir = DmaDirection::kBidirectional) {
    return a_.sync_for_device(dir);
  }
  Result<void> sync_for_cpu(DmaDirection dir = DmaDirection::kBidirectional) {
    return a_.sync_for_cpu(dir);
  }
  void reset() { a_.reset(); }
  [[nodiscard]] DmaHandle release() { return a_.release(); }

 private:
  ContiguousArray<T> a_;
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
  // Both masks (streaming and coherent) start as c.dma_mask, unchecked: a device's mask is what
  // its hardware generates; a driver that negotiates calls set_dma_mask_and_coherent.
  DeviceDma(DmaOp* op, const DmaConstraints& c) : op_(op), c_(c), coherent_mask_(c.dma_mask) {
    if (c_.coherence == DmaCoherence::kPlatformDefault) {
      c_.coherence = op->default_constraints().coherence;
    }
    c_.device_id = DmaDebug::new_device_id();
  }
  // A device with the platform's default coherence and this mask (both masks).
  DeviceDma(DmaOp* op, uint64_t dma_mask)
      : op_(op), c_(op->default_constraints()), coherent_mask_(dma_mask) {
    c_.dma_mask = dma_mask;
    c_.device_id = DmaDebug::new_device_id();
  }

  DmaOp* op() const { return op_; }
  const DmaConstraints& constraints() const { return c_; }
  // The alignment at which a buffer shares no cache line with other data: kFromDevice and
  // kBidirectional buffers of a non-coherent device aligned and sized to it are mapped directly,
  // others are bounced whole (DmaOp::cache_alignment). Any context.
  size_t cache_alignment() const { return op_->cache_alignment(); }
  // The largest streaming mapping map() can make for this device (DmaOp::max_mapping_size):
  // SIZE_MAX for a device that never bounces, else its bounce pool's limit. Any context.
  size_t max_mapping_size() const { return op_->max_mapping_size(c_); }
  // The size to split large transfers at (DmaOp::opt_mapping_size), at most max_mapping_size().
  // Any context.
  size_t opt_mapping_size() const { return op_->opt_mapping_size(c_); }
  // Whether a streaming mapping at `addr` (one of this device's) needs its syncs
  // (DmaOp::need_sync): true for a device that does not snoop or a bounced mapping. A driver
  // may skip sync_for_cpu / sync_for_device where it is false. Any context.
  bool need_sync(DmaAddr addr) const { return op_->need_sync(c_, addr); }
  // The streaming mask (map, map_page) and the coherent mask (alloc_array, alloc_box,
  // alloc_noncoherent).
  uint64_t dma_mask() const { return c_.dma_mask; }
  uint64_t coherent_mask() const { return coherent_mask_; }
  // The constraints coherent allocations are made with: constraints() with the coherent mask.
  DmaConstraints coherent_constraints() const { return with_mask(coherent_mask_); }

  // Mask negotiation at probe time, as Linux's dma_set_mask / dma_set_coherent_mask /
  // dma_set_mask_and_coherent: the mask is taken only if the platform can serve it
  // (DmaOp::check_mask: streaming, the device reaches all RAM or some bounce pool lies under the
  // mask; coherent, some managed memory lies under it), so that a driver can try a wide mask and
  // fall back to a narrower one. Errors: kInvalidArgument (mask 0), kDmaMaskNotMatch (nothing
  // serves it; Error::addr / mask say why); on error both masks stay as they were (and_coherent
  // checks both before changing either). Mappings made before keep what they were made with.
  // Any context; call while no other CPU maps for the device.
  Result<void> set_dma_mask(uint64_t mask) {
    TRY(op_->check_mask(with_mask(mask), DmaMaskKind::kStreaming));
    c_.dma_mask = mask;
    return support::ok();
  }
  Result<void> set_coherent_mask(uint64_t mask) {
    TRY(op_->check_mask(with_mask(mask), DmaMaskKind::kCoherent));
    coherent_mask_ = mask;
    return support::ok();
  }
  Result<void> set_dma_mask_and_coherent(uint64_t mask) {
    TRY(op_->check_mask(with_mask(mask), DmaMaskKind::kStreaming));
    TRY(op_->check_mask(with_mask(mask), DmaMaskKind::kCoherent));
    c_.dma_mask = mask;
    coherent_mask_ = mask;
    return support::ok();
  }
  // The smallest 2^n - 1 mask that reaches all of RAM through this device's bus offset (Linux's
  // dma_get_required_mask). Any context.
  uint64_t required_mask() const { return op_->required_mask(c_); }
  // Whether the streaming mask is below required_mask(): some RAM is out of the device's direct
  // reach, so mappings of it bounce (Linux's dma_addressing_limited). Any context.
  bool addressing_limited() const { return c_.dma_mask < required_mask(); }
  // Whether the device snoops the CPU caches (its own coherence, or the platform's).
  bool coherent() const { return c_.coherence == DmaCoherence::kCoherent; }
  // Overrides (a driver that knows better, or a test).
  void set_coherent(bool coherent) { c_.coherence = dma_coherence(coherent); }
  void set_force_bounce(bool force) { c_.force_bounce = force; }
  void set_min_align_mask(uint64_t m) { c_.min_align_mask = m; }
  // The device's DMA windows (DmaConstraints::windows: `n` entries at `w`, owned by the caller
  // and outliving the device and its copies; n 0 goes back to the single bus_offset). Errors:
  // kInvalidArgument (n above kMaxDmaWindows, w null with n > 0, an empty or wrapping window);
  // nothing changes then. Mappings made before keep what they were made with.
  Result<void> set_dma_windows(const DmaWindow* w, size_t n) {
    DmaConstraints c = c_;
    c.windows = n == 0 ? nullptr : w;
    c.num_windows = static_cast<uint8_t>(n <= kMaxDmaWindows ? n : 0);
    if (n > kMaxDmaWindows || (n != 0 && w == nullptr)) return ErrorCode::kInvalidArgument;
    for (size_t i = 0; i < n; ++i) {
      if (w[i].size == 0 || w[i].cpu_base.value() + (w[i].size - 1) < w[i].cpu_base.value() ||
          w[i].dma_base.value() + (w[i].size - 1) < w[i].dma_base.value()) {
        return ErrorCode::kInvalidArgument;
      }
    }
    c_ = c;
    return support::ok();
  }
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

  // map() with attributes (DmaOp::map_single_attrs): kDmaAttrSkipCpuSync (no cache maintenance
  // or copy out at map and unmap: the driver syncs by range itself), kDmaAttrWeakOrdering
  // (accepted). Errors: map()'s, kInvalidArgument for an attribute that is not a mapping's.
  DmaMapResult<StreamingMapping> map_attrs(void* addr, size_t size, DmaDirection dir,
                                           DmaAttrs attrs, size_t align = 0,
                                           DmaCallSite site = DmaCallSite::current()) {
    auto h = op_->map_single_attrs(c_, addr, size, align, dir, attrs);
    if (!h.ok()) return dma_map_failure<StreamingMapping>(h.error(), c_, addr, size, dir);
    DmaDebug::note_call_site(op_, h->dma_addr, c_.device_id, site);
    return StreamingMapping(op_, *h);
  }

  // Maps bytes [offset, offset + size) of the RAM page at physical `page` (page aligned) without a
  // kernel virtual address (Linux's dma_map_page; DmaOp::map_page): map()'s decision and
  // contract, bouncing through the page's direct map when needed. Errors: kInvalidArgument (page
  // not aligned or not RAM), kOutOfRange (past the page), kLayoutError (size 0), and map()'s.
  DmaMapResult<StreamingMapping> map_page(PhysAddr page, size_t offset, size_t size,
                                          DmaDirection dir,
                                          DmaCallSite site = DmaCallSite::current()) {
    auto h = op_->map_page(c_, page, offset, size, dir);
    if (!h.ok()) return dma_map_failure<StreamingMapping>(h.error(), c_, nullptr, size, dir);
    DmaDebug::note_call_site(op_, h->dma_addr, c_.device_id, site);
    return StreamingMapping(op_, *h);
  }

  // The device address of another device's MMIO range [phys, phys + size) for peer-to-peer DMA
  // (Linux's dma_map_resource; DmaOp::map_resource): bus offset applied, never bounced. Errors:
  // kLayoutError (size 0, wraps), kInvalidArgument (RAM), kDmaMaskNotMatch (beyond the mask).
  // unmap_resource ends it (nothing to undo without an IOMMU). Any context.
  Result<DmaAddr> map_resource(PhysAddr phys, size_t size, DmaDirection dir) {
    return op_->map_resource(c_, phys, size, dir);
  }
  void unmap_resource(DmaAddr addr, size_t size, DmaDirection dir) {
    op_->unmap_resource(c_, addr, size, dir);
  }

  // alloc_array with attributes (DmaOp::alloc_attrs): kDmaAttrWriteCombine, kDmaAttrNoKernelMapping
  // (raw_data() is then a cookie, not to be dereferenced), kDmaAttrWeakOrdering. Errors:
  // alloc_array's, kInvalidArgument (an attribute that is not an allocation's, write-combining
  // with no kernel mapping), kNotSupported (no write-combining encoding on this platform).
  // Context: thread only when the pages are remapped (write-combining, or a device that does not
  // snoop without kDmaAttrNoKernelMapping).
  template <typename T>
  Result<DArray<T>> alloc_attrs(size_t count, DmaAttrs attrs, size_t align = alignof(T),
                                DmaCallSite site = DmaCallSite::current()) {
    if (count == 0 || count > ~size_t{0} / sizeof(T)) return ErrorCode::kLayoutError;
    TRY_ASSIGN(DmaHandle h, op_->alloc_attrs(with_mask(coherent_mask_),
                                             Layout{count * sizeof(T), align}, attrs));
    DmaDebug::note_call_site(op_, h.dma_addr, c_.device_id, site);
    return DArray<T>(op_, h, count);
  }
  // `count` zeroed objects of T in coherent memory the CPU maps write-combining (Linux's
  // dma_alloc_wc): alloc_attrs(count, kDmaAttrWriteCombine). Thread only.
  template <typename T>
  Result<DArray<T>> alloc_wc(size_t count, size_t align = alignof(T),
                             DmaCallSite site = DmaCallSite::current()) {
    return alloc_attrs<T>(count, kDmaAttrWriteCombine, align, site);
  }

  // `count` zeroed objects of T in coherent memory; see DmaOp::alloc_coherent for the errors
  // (plus kLayoutError when count * sizeof(T) overflows or count is 0).
  template <typename T>
  Result<DArray<T>> alloc_array(size_t count, size_t align = alignof(T),
                                DmaCallSite site = DmaCallSite::current()) {
    if (count == 0 || count > ~size_t{0} / sizeof(T)) return ErrorCode::kLayoutError;
    TRY_ASSIGN(DmaHandle h,
               op_->alloc_coherent(with_mask(coherent_mask_), Layout{count * sizeof(T), align}));
    DmaDebug::note_call_site(op_, h.dma_addr, c_.device_id, site);
    return DArray<T>(op_, h, count);
  }

  // `count` zeroed objects of T in memory the CPU keeps cached, under the coherent mask, owned
  // by the CPU first (ContiguousArray; DmaOp::alloc_noncoherent). Errors: as alloc_array's,
  // except that nothing is remapped (no page-table kNoMemory; kNotSupported only for a device
  // that does not snoop on a platform without cache maintenance). Any context with KernelDmaOp.
  template <typename T>
  Result<ContiguousArray<T>> alloc_noncoherent(size_t count, size_t align = alignof(T),
                                               DmaCallSite site = DmaCallSite::current()) {
    if (count == 0 || count > ~size_t{0} / sizeof(T)) return ErrorCode::kLayoutError;
    TRY_ASSIGN(DmaHandle h,
               op_->alloc_noncoherent(with_mask(coherent_mask_), Layout{count * sizeof(T), align}));
    DmaDebug::note_call_site(op_, h.dma_addr, c_.device_id, site);
    return ContiguousArray<T>(op_, h, count);
  }
  // One zeroed T in cacheable DMA memory (ContiguousBox).
  template <typename T>
  Result<ContiguousBox<T>> alloc_noncoherent_box(DmaCallSite site = DmaCallSite::current()) {
    TRY_ASSIGN(ContiguousArray<T> a, alloc_noncoherent<T>(1, alignof(T), site));
    return ContiguousBox<T>(support::move(a));
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
  // The constraints with another mask (the coherent one, or one being checked).
  DmaConstraints with_mask(uint64_t mask) const {
    DmaConstraints c = c_;
    c.dma_mask = mask;
    return c;
  }

  DmaOp* op_ = nullptr;
  DmaConstraints c_;
  uint64_t coherent_mask_ = ~0ull;
};
