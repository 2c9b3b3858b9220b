#include "drivers/pci/pci_host_bridge.h"

#include "dmakit/support/bitops.h"

namespace {

constexpr unsigned kMaxBridgeDepth = 8;
constexpr uint64_t k4GiB = 1ull << 32;
// I/O ports below this are legacy ISA devices; PCI I/O BARs never go there.
constexpr uint64_t kIoFloor = 0x1000;

bool is_io(const PciBar& b) {
  return b.kind == PciBar::Kind::kIo;
}

}  // namespace

Result<void> PciHostBridge::init(PciConfigAccess* cfg, uint8_t bus_start, uint8_t bus_end,
                                 support::Span<const PciWindow> windows) {
  if (cfg_ != nullptr) return ErrorCode::kBusy;
  if (cfg == nullptr || bus_end < bus_start || windows.size() > kMaxWindows) {
    return ErrorCode::kInvalidArgument;
  }
  for (const PciWindow& w : windows) {
    if (w.size == 0 || support::add_overflows(w.bus_base, w.size) ||
        support::add_overflows(w.cpu_base.value(), w.size)) {
      return ErrorCode::kInvalidArgument;
    }
  }
  for (size_t i = 0; i < windows.size(); ++i) windows_[i] = windows[i];
  num_windows_ = windows.size();
  cfg_ = cfg;
  bus_start_ = bus_start;
  bus_end_ = bus_end;
  return support::ok();
}

Result<void> PciHostBridge::enumerate() {
  if (cfg_ == nullptr || enumerated_) return ErrorCode::kInvalidArgument;
  enumerated_ = true;
  scan_bus(bus_start_, 0);
  for (size_t i = 0; i < num_devices_; ++i) size_bars(devices_[i]);
  assign_all();
  return support::ok();
}

PciDevice& PciHostBridge::device(size_t i) {
  KASSERT(i < num_devices_, "PciHostBridge::device index out of range");
  return devices_[i];
}

const PciDevice& PciHostBridge::device(size_t i) const {
  KASSERT(i < num_devices_, "PciHostBridge::device index out of range");
  return devices_[i];
}

PciDevice* PciHostBridge::find(uint16_t vendor, uint16_t device, const PciDevice* after) {
  size_t i = after == nullptr ? 0 : static_cast<size_t>(after - devices_) + 1;
  for (; i < num_devices_; ++i) {
    if (devices_[i].vendor_ == vendor && devices_[i].device_ == device) return &devices_[i];
  }
  return nullptr;
}

void PciHostBridge::scan_bus(uint8_t bus, unsigned depth) {
  for (uint8_t dev = 0; dev < 32; ++dev) {
    PciAddress a{bus, dev, 0};
    if (cfg_->read16(a, pci::kVendorId) == 0xFFFF) continue;
    bool multi = (cfg_->read8(a, pci::kHeaderType) & 0x80) != 0;
    for (uint8_t fn = 0; fn < (multi ? 8 : 1); ++fn) {
      a.fn = fn;
      if (fn != 0 && cfg_->read16(a, pci::kVendorId) == 0xFFFF) continue;
      add_function(a);
      if ((cfg_->read8(a, pci::kHeaderType) & 0x7F) != 1) continue;
      uint8_t secondary = cfg_->read8(a, pci::kSecondaryBus);
      if (secondary > bus && secondary <= bus_end_ && depth < kMaxBridgeDepth) {
        scan_bus(secondary, depth + 1);
      } else {
        ++stats_.skipped_bridges;
      }
    }
  }
}

void PciHostBridge::add_function(PciAddress a) {
  if (num_devices_ == kMaxDevices) {
    ++stats_.dropped_functions;
    return;
  }
  PciDevice& d = devices_[num_devices_++];
  d.cfg_ = cfg_;
  d.addr_ = a;
  d.vendor_ = cfg_->read16(a, pci::kVendorId);
  d.device_ = cfg_->read16(a, pci::kDeviceId);
  uint32_t rev_class = cfg_->read32(a, pci::kRevision);
  d.revision_ = static_cast<uint8_t>(rev_class & 0xFF);
  d.class_code_ = rev_class >> 8;
  d.header_type_ = static_cast<uint8_t>(cfg_->read8(a, pci::kHeaderType) & 0x7F);
  d.num_bars_ = d.header_type_ == 0 ? 6 : (d.header_type_ == 1 ? 2 : 0);
  ++stats_.functions;
}

void PciHostBridge::size_bars(PciDevice& d) {
  // Decoding off while the BARs hold all ones: they would claim random addresses meanwhile.
  uint16_t cmd = d.config_read16(pci::kCommand);
  d.config_write16(pci::kCommand,
                   static_cast<uint16_t>(cmd & ~(pci::kCommandIo | pci::kCommandMemory)));
  for (unsigned i = 0; i < d.num_bars_; ++i) {
    uint32_t off = pci::kBar0 + 4 * i;
    PciBar& b = d.bars_[i];
    uint32_t orig = d.config_read32(off);
    d.config_write32(off, 0xFFFF'FFFFu);
    uint32_t probe = d.config_read32(off);
    d.config_write32(off, orig);
    if ((orig & 1) != 0) {
      uint32_t mask = probe & ~3u;
      if (mask == 0) continue;
      if ((mask >> 16) == 0) mask |= 0xFFFF'0000u;  // 16-bit I/O decoders.
      b.kind = PciBar::Kind::kIo;
      b.size = uint64_t{~mask} + 1;
      b.bus_addr = orig & ~3u;
    } else {
      bool is64 = ((orig >> 1) & 3) == 2 && i + 1 < d.num_bars_;
      uint64_t addr = orig & ~0xFu;
      uint64_t mask = probe & ~0xFu;
      if (is64) {
        uint32_t orig_hi = d.config_read32(off + 4);
        d.config_write32(off + 4, 0xFFFF'FFFFu);
        uint32_t probe_hi = d.config_read32(off + 4);
        d.config_write32(off + 4, orig_hi);
        addr |= uint64_t{orig_hi} << 32;
        mask |= uint64_t{probe_hi} << 32;
      } else if (mask != 0) {
        mask |= 0xFFFF'FFFF'0000'0000ull;
      }
      if (mask == 0) continue;
      b.kind = is64 ? PciBar::Kind::kMem64 : PciBar::Kind::kMem32;
      b.prefetchable = (orig & 8) != 0;
      b.size = ~mask + 1;
      b.bus_addr = addr;
    }
    ++stats_.bars;
    if (b.bus_addr != 0) {
      b.firmware_assigned = true;
      ++stats_.firmware_bars;
      translate(b);
    }
    if (b.kind == PciBar::Kind::kMem64) ++i;  // The upper half is not a BAR of its own.
  }
  d.config_write16(pci::kCommand, cmd);
}

void PciHostBridge::translate(PciBar& bar) const {
  for (size_t i = 0; i < num_windows_; ++i) {
    const PciWindow& w = windows_[i];
    if ((w.kind == PciWindow::Kind::kIo) != is_io(bar)) continue;
    if (bar.bus_addr >= w.bus_base && bar.bus_addr - w.bus_base < w.size &&
        bar.size <= w.size - (bar.bus_addr - w.bus_base)) {
      bar.cpu_addr = w.cpu_base + (bar.bus_addr - w.bus_base);
      return;
    }
  }
  // A firmware-assigned BAR outside every known window (e.g. a 64-bit BAR the x86 firmware put
  // above RAM): host bridges without a description translate one to one.
  bar.cpu_addr = PhysAddr(bar.bus_addr);
}

void PciHostBridge::assign_all() {
  struct Pending {
    PciDevice* dev;
    unsigned bar;
    uint64_t size;
  };
  Pending pending[kMaxDevices * PciDevice::kMaxBars];
  size_t n = 0;
  for (size_t i = 0; i < num_devices_; ++i) {
    for (unsigned b = 0; b < devices_[i].num_bars_; ++b) {
      const PciBar& bar = devices_[i].bars_[b];
      if (bar.size != 0 && bar.bus_addr == 0) pending[n++] = {&devices_[i], b, bar.size};
    }
  }
  // Largest first (insertion sort: a few dozen entries), stable for equal sizes.
  for (size_t i = 1; i < n; ++i) {
    Pending p = pending[i];
    size_t j = i;
    for (; j > 0 && pending[j - 1].size < p.size; --j) pending[j] = pending[j - 1];
    pending[j] = p;
  }
  for (size_t i = 0; i < n; ++i) {
    if (assign(*pending[i].dev, pending[i].bar)) {
      ++stats_.assigned_bars;
    } else {
      ++stats_.unassigned_bars;
    }
  }
}

uint64_t PciHostBridge::taken_until(uint64_t bus_lo, uint64_t size, bool io) const {
  for (size_t i = 0; i < num_devices_; ++i) {
    for (unsigned b = 0; b < devices_[i].num_bars_; ++b) {
      const PciBar& bar = devices_[i].bars_[b];
      if (!bar.assigned() || is_io(bar) != io) continue;
      if (bus_lo < bar.bus_addr + bar.size && bar.bus_addr < bus_lo + size) {
        return bar.bus_addr + bar.size;
      }
    }
  }
  return 0;
}

bool PciHostBridge::assign(PciDevice& d, unsigned index) {
  PciBar& bar = d.bars_[index];
  bool io = is_io(bar);
  // Window preference: see the header. Pass 0 takes the preferred kind, pass 1 the fallback.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t wi = 0; wi < num_windows_; ++wi) {
      const PciWindow& w = windows_[wi];
      bool ok;
      if (io) {
        ok = pass == 0 && w.kind == PciWindow::Kind::kIo;
      } else if (bar.kind == PciBar::Kind::kMem64) {
        ok = w.kind == (pass == 0 ? PciWindow::Kind::kMem64 : PciWindow::Kind::kMem32);
      } else {
        ok = pass == 0 && w.kind != PciWindow::Kind::kIo && w.bus_base + w.size <= k4GiB;
      }
      if (!ok) continue;
      uint64_t end = w.bus_base + w.size;
      uint64_t lo = support::max<uint64_t>(w.bus_base, io ? kIoFloor : 1);
      // Natural alignment; each retry starts past a taken BAR, so the walk is O(BARs) steps.
      for (uint64_t cand = support::align_up(lo, bar.size);
           cand >= lo && cand <= end && bar.size <= end - cand;) {
        uint64_t taken = taken_until(cand, bar.size, io);
        if (taken != 0) {
          cand = support::align_up(taken, bar.size);
          continue;
        }
        uint32_t off = pci::kBar0 + 4 * index;
        uint16_t cmd = d.config_read16(pci::kCommand);
        d.config_write16(pci::kCommand,
                         static_cast<uint16_t>(cmd & ~(pci::kCommandIo | pci::kCommandMemory)));
        d.config_write32(off, static_cast<uint32_t>(cand));
        if (bar.kind == PciBar::Kind::kMem64) {
          d.config_write32(off + 4, static_cast<uint32_t>(cand >> 32));
        }
        uint64_t back = d.config_read32(off) & (io ? ~3u : ~0xFu);
        if (bar.kind == PciBar::Kind::kMem64) back |= uint64_t{d.config_read32(off + 4)} << 32;
        d.config_write16(pci::kCommand, cmd);
        if (io) back &= 0xFFFF'FFFFu;
        if (back != cand) return false;  // The BAR does not hold what it was given.
        bar.bus_addr = cand;
        bar.cpu_addr = w.cpu_base + (cand - w.bus_base);
        return true;
      }
    }
  }
  return false;
}
