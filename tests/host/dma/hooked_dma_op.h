// HookedDmaOp: a DmaOp for tests that forwards every operation to another one, runs a one-shot
// hook inside alloc_coherent (to act while a caller is in the middle of it), and can report a
// bus offset in its default constraints (the inner DmaOp must then add it, as KernelDmaOp does).
#pragma once

#include <atomic>
#include <functional>
#include <utility>

#include "dmakit/dma_op.h"

class HookedDmaOp final : public DmaOp {
 public:
  explicit HookedDmaOp(DmaOp* inner) : inner_(inner) {}
  // Runs inside the next alloc_coherent call, before it forwards; cleared as it starts, so
  // later calls (from any thread) see none.
  std::function<void()> once_in_alloc_coherent;
  std::atomic<int> alloc_coherent_calls{0};

  size_t page_size() const override { return inner_->page_size(); }
  using DmaOp::map_single;
  Result<DmaMapHandle> map_single(const DmaConstraints& c, void* addr, size_t size, size_t align,
                                  DmaDirection dir) override {
    return inner_->map_single(c, addr, size, align, dir);
  }
  void unmap_single(const DmaMapHandle& h) override { inner_->unmap_single(h); }
  Result<DmaHandle> alloc_coherent(const DmaConstraints& c, Layout layout) override {
    alloc_coherent_calls.fetch_add(1);
    std::function<void()> hook = std::move(once_in_alloc_coherent);
    once_in_alloc_coherent = nullptr;
    if (hook) hook();
    return inner_->alloc_coherent(c, layout);
  }
  void dealloc_coherent(const DmaHandle& h) override { inner_->dealloc_coherent(h); }
  void flush(const void* addr, size_t size) override { inner_->flush(addr, size); }
  void invalidate(const void* addr, size_t size) override { inner_->invalidate(addr, size); }
  void flush_invalidate(const void* addr, size_t size) override {
    inner_->flush_invalidate(addr, size);
  }
  Result<void> prepare_read(const DmaMapHandle& h, size_t offset, size_t size,
                            DmaDirection dir) override {
    return inner_->prepare_read(h, offset, size, dir);
  }
  Result<void> confirm_write(const DmaMapHandle& h, size_t offset, size_t size,
                             DmaDirection dir) override {
    return inner_->confirm_write(h, offset, size, dir);
  }
  DmaConstraints default_constraints() const override {
    DmaConstraints c = inner_->default_constraints();
    c.bus_offset = bus_offset;
    return c;
  }
  size_t cache_alignment() const override { return inner_->cache_alignment(); }
  size_t max_mapping_size(const DmaConstraints& c) const override {
    return inner_->max_mapping_size(c);
  }
  // Reported in default_constraints (set before building a DeviceDma on this op).
  uint64_t bus_offset = 0;

 private:
  DmaOp* inner_;
};
