// Host bridge discovery and enumeration for the test kernel (see testkernel/devices.h).
//
// Device tree (aarch64, riscv64): the first enabled "pci-host-ecam-generic" node gives
//   reg        -- the ECAM (1 MiB per bus),
//   bus-range  -- the buses it decodes (0..255 if absent),
//   ranges     -- windows: child address (3 cells: phys.hi flags with the space code in bits
//                 25:24 -- 1 I/O, 2 32-bit memory, 3 64-bit memory -- and prefetchable in bit 30;
//                 then the 64-bit bus address), parent (CPU) address, size.
//   dma-ranges -- the bridge's DMA windows (Fdt::dma_ranges; on the node or an ancestor bus): which
//                 physical memory a device below the bridge reaches at which bus address. None
//                 (the QEMU default) means the device reaches all of memory at its physical
//                 address. A dma-ranges the kernel cannot read is reported and ignored, as if
//                 absent: the devices still work where memory is identity-mapped, which is the
//                 best guess left.
// Without a device tree (x86_64): arch::pci_host_fallback() describes the q35 host bridge.
//
// The bridge's "dma-coherent" flag is reported but not applied: the DeviceDma objects keep the
// platform's default (non-coherent on aarch64 and riscv64), so the streaming paths do their cache
// maintenance; on a coherent device that is redundant but harmless, and QEMU models no caches
// that would show the difference.
#include "testkernel/devices.h"

#include "testkernel/arch_io.h"
#include "testkernel/fdt.h"
#include "testkernel/iommu.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"

namespace {

constexpr uint64_t kMiB = 1ull << 20;

// Configuration space through the PC's legacy mechanism: the address goes to port 0xCF8, the
// data is read or written at 0xCFC + (offset & 3).
class PortConfigAccess final : public PciConfigAccess {
 public:
  uint32_t space_size() const override { return 256; }
  uint8_t read8(PciAddress a, uint32_t off) override {
    return static_cast<uint8_t>(read(a, off, 1));
  }
  uint16_t read16(PciAddress a, uint32_t off) override {
    return static_cast<uint16_t>(read(a, off, 2));
  }
  uint32_t read32(PciAddress a, uint32_t off) override { return read(a, off, 4); }
  void write8(PciAddress a, uint32_t off, uint8_t v) override { write(a, off, v, 1); }
  void write16(PciAddress a, uint32_t off, uint16_t v) override { write(a, off, v, 2); }
  void write32(PciAddress a, uint32_t off, uint32_t v) override { write(a, off, v, 4); }

 private:
  static constexpr uint16_t kAddressPort = 0xCF8;
  static constexpr uint16_t kDataPort = 0xCFC;

  static bool select(PciAddress a, uint32_t off) {
    if (off >= 256 || a.dev >= 32 || a.fn >= 8) return false;
    uint32_t addr = 0x8000'0000u | (uint32_t{a.bus} << 16) | (uint32_t{a.dev} << 11) |
                    (uint32_t{a.fn} << 8) | (off & 0xFCu);
    return arch::port_out(kAddressPort, addr, 4).ok();
  }
  static uint32_t read(PciAddress a, uint32_t off, unsigned width) {
    if (!select(a, off)) return 0xFFFF'FFFFu;
    auto v = arch::port_in(static_cast<uint16_t>(kDataPort + (off & 3)), width);
    return v.ok() ? *v : 0xFFFF'FFFFu;
  }
  static void write(PciAddress a, uint32_t off, uint32_t v, unsigned width) {
    if (!select(a, off)) return;
    (void)arch::port_out(static_cast<uint16_t>(kDataPort + (off & 3)), v, width);
  }
};

Devices g_devices;
EcamConfigAccess g_ecam_access;
PortConfigAccess g_port_access;
bool g_initialized = false;
Error g_init_error;

struct HostDesc {
  PhysRange ecam;
  uint8_t bus_start = 0;
  uint8_t bus_end = 255;
  PciWindow windows[PciHostBridge::kMaxWindows];
  size_t num_windows = 0;
  bool dma_coherent = false;
  const char* source = "";
  DmaWindow dma_windows[kMaxDmaWindows];
  size_t num_dma_windows = 0;  // How many were kept (at most kMaxDmaWindows).
  size_t dt_dma_windows = 0;   // How many the device tree has.
  ErrorCode dma_ranges_error = ErrorCode::kOk;
};

// A window whose CPU or bus range runs past 2^64 (DeviceDma::set_dma_windows refuses it).
bool window_wraps(const DmaWindow& w) {
  return w.cpu_base.value() + (w.size - 1) < w.cpu_base.value() ||
         w.dma_base.value() + (w.size - 1) < w.dma_base.value();
}

// The bridge's dma-ranges into `d`; kNotFound is "no windows", any other error is kept in
// d->dma_ranges_error (reported, the windows ignored).
void dma_ranges_from_fdt(const Fdt& fdt, FdtNode bridge, HostDesc* d) {
  auto n = fdt.dma_ranges(bridge, d->dma_windows, kMaxDmaWindows);
  if (!n.ok()) {
    if (n.code() != ErrorCode::kNotFound) d->dma_ranges_error = n.code();
    return;
  }
  size_t kept = *n < kMaxDmaWindows ? *n : kMaxDmaWindows;
  for (size_t i = 0; i < kept; ++i) {
    if (window_wraps(d->dma_windows[i])) {
      d->dma_ranges_error = ErrorCode::kInvalidArgument;
      return;
    }
  }
  // Beyond kMaxDmaWindows the rest are dropped: a device then reaches less memory than the tree
  // says and bounces more, which is safe.
  d->dt_dma_windows = *n;
  d->num_dma_windows = kept;
}

Result<HostDesc> host_from_fdt(const Fdt& fdt) {
  FdtNode n;
  for (n = fdt.find_compatible("pci-host-ecam-generic"); n.valid();
       n = fdt.find_compatible("pci-host-ecam-generic", n)) {
    if (fdt.is_enabled(n)) break;
  }
  if (!n.valid()) return ErrorCode::kNotFound;
  HostDesc d;
  d.source = "device tree (pci-host-ecam-generic)";
  TRY_ASSIGN(d.ecam, fdt.reg(n, 0));
  FdtProp bus_range = fdt.prop(n, "bus-range");
  if (bus_range.found()) {
    if (bus_range.len != 8) return ErrorCode::kInvalidArgument;
    uint32_t lo = Fdt::be32(bus_range.data);
    uint32_t hi = Fdt::be32(bus_range.data + 4);
    if (lo > hi || hi > 255) return ErrorCode::kInvalidArgument;
    d.bus_start = static_cast<uint8_t>(lo);
    d.bus_end = static_cast<uint8_t>(hi);
  }
  // The ECAM may cover fewer buses than bus-range claims.
  uint64_t ecam_buses = d.ecam.size / kMiB;
  if (ecam_buses == 0) return ErrorCode::kInvalidArgument;
  if (ecam_buses < uint64_t{d.bus_end} - d.bus_start + 1) {
    d.bus_end = static_cast<uint8_t>(d.bus_start + ecam_buses - 1);
  }
  d.dma_coherent = fdt.has_prop(n, "dma-coherent");
  dma_ranges_from_fdt(fdt, n, &d);

  FdtProp ranges = fdt.prop(n, "ranges");
  uint32_t child_cells = fdt.address_cells(n);
  uint32_t parent_cells = fdt.address_cells(fdt.parent(n));
  uint32_t size_cells = fdt.size_cells(n);
  if (child_cells != 3 || parent_cells == 0 || parent_cells > 2 || size_cells == 0 ||
      size_cells > 2) {
    return ErrorCode::kInvalidArgument;
  }
  uint32_t entry = 4 * (child_cells + parent_cells + size_cells);
  for (uint32_t off = 0; ranges.found() && off + entry <= ranges.len; off += entry) {
    const uint8_t* e = ranges.data + off;
    uint32_t flags = Fdt::be32(e);
    uint64_t bus = Fdt::read_cells(e + 4, 2);
    uint64_t cpu = Fdt::read_cells(e + 12, parent_cells);
    uint64_t size = Fdt::read_cells(e + 12 + 4 * parent_cells, size_cells);
    PciWindow w;
    switch ((flags >> 24) & 3) {
      case 1:
        w.kind = PciWindow::Kind::kIo;
        break;
      case 2:
        w.kind = PciWindow::Kind::kMem32;
        break;
      case 3:
        w.kind = PciWindow::Kind::kMem64;
        break;
      default:
        continue;  // Configuration space: not a window.
    }
    if (size == 0 || d.num_windows == PciHostBridge::kMaxWindows) continue;
    w.prefetchable = (flags & (1u << 30)) != 0;
    w.cpu_base = PhysAddr(cpu);
    w.bus_base = bus;
    w.size = size;
    d.windows[d.num_windows++] = w;
  }
  return d;
}

Result<HostDesc> host_from_arch() {
  TRY_ASSIGN(arch::PciHostDesc a, arch::pci_host_fallback());
  HostDesc d;
  d.ecam = a.ecam;
  d.bus_start = a.bus_start;
  d.bus_end = a.bus_end;
  d.source = a.source;
  for (size_t i = 0; i < a.num_windows && i < PciHostBridge::kMaxWindows; ++i) {
    const arch::PciHostWindow& s = a.windows[i];
    PciWindow& w = d.windows[d.num_windows++];
    w.kind = s.kind == arch::PciHostWindow::Kind::kIo
                 ? PciWindow::Kind::kIo
                 : (s.kind == arch::PciHostWindow::Kind::kMem64 ? PciWindow::Kind::kMem64
                                                                : PciWindow::Kind::kMem32);
    w.prefetchable = s.prefetchable;
    w.cpu_base = s.cpu_base;
    w.bus_base = s.bus_base;
    w.size = s.size;
  }
  return d;
}

// Parses a hex number ("0x" optional) ending at a ',' or ':' or the end; advances *p.
bool parse_hex(const char** p, uint64_t* out) {
  const char* s = *p;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s += 2;
  uint64_t v = 0;
  unsigned digits = 0;
  for (;; ++s, ++digits) {
    char c = *s;
    unsigned d;
    if (c >= '0' && c <= '9') {
      d = static_cast<unsigned>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = static_cast<unsigned>(c - 'a' + 10);
    } else if (c >= 'A' && c <= 'F') {
      d = static_cast<unsigned>(c - 'A' + 10);
    } else {
      break;
    }
    if (digits == 16) return false;
    v = v << 4 | d;
  }
  if (digits == 0) return false;
  *out = v;
  *p = s;
  return true;
}

// The mask the command line gives the edu device in root-bus slot `slot`, if any.
bool edu_mask_from_cmdline(const char* cmdline, uint8_t slot, uint64_t* mask) {
  char value[128];
  if (!kstr::cmdline_value(cmdline, "edu_mask", value, sizeof(value))) return false;
  const char* p = value;
  while (*p != '\0') {
    uint64_t s = 0;
    uint64_t m = 0;
    if (!parse_hex(&p, &s) || *p != ':') return false;
    ++p;
    if (!parse_hex(&p, &m)) return false;
    if (s == slot && m != 0) {
      *mask = m;
      return true;
    }
    if (*p == ',') ++p;
  }
  return false;
}

const char* bar_kind_name(const PciBar& b) {
  switch (b.kind) {
    case PciBar::Kind::kIo:
      return "io";
    case PciBar::Kind::kMem32:
      return "mem32";
    case PciBar::Kind::kMem64:
      return "mem64";
    case PciBar::Kind::kNone:
      break;
  }
  return "none";
}

const char* window_kind_name(PciWindow::Kind k) {
  switch (k) {
    case PciWindow::Kind::kIo:
      return "io";
    case PciWindow::Kind::kMem32:
      return "mem32";
    case PciWindow::Kind::kMem64:
      return "mem64";
  }
  return "?";
}

}  // namespace

const Devices::Edu& Devices::edu(size_t i) const {
  KASSERT(i < num_edu_, "Devices::edu index out of range");
  return edu_[i];
}

const Devices::Edu* Devices::edu_with_mask(uint64_t mask) const {
  for (size_t i = 0; i < num_edu_; ++i) {
    if (edu_[i].dma_mask == mask) return &edu_[i];
  }
  return nullptr;
}

PciDevice* Devices::nvme(size_t i) const {
  KASSERT(i < num_nvme_, "Devices::nvme index out of range");
  return nvme_[i];
}

PciConfigAccess* Devices::port_config_access() const {
  // Reading the address latch has no side effect; it fails where there are no I/O ports.
  return arch::port_in(0xCF8, 4).ok() ? &g_port_access : nullptr;
}

void Devices::print_report() const {
  char sz[32];
  kprintf("pci: host bridge from %s; buses %u..%u", source_, pci_.bus_start(), pci_.bus_end());
  if (ecam_.size != 0) {
    kprintf("; ECAM [0x%llx, 0x%llx)", static_cast<unsigned long long>(ecam_.base.value()),
            static_cast<unsigned long long>(ecam_.end().value()));
  } else {
    kprintf("; config through ports 0xCF8/0xCFC");
  }
  kprintf("%s\n", dt_dma_coherent_ ? "; dma-coherent in the device tree" : "");
  print_dma_ranges();
  for (size_t i = 0; i < pci_.num_windows(); ++i) {
    const PciWindow& w = pci_.window(i);
    kprintf("  window %-5s%s cpu 0x%llx -> bus 0x%llx, %s\n", window_kind_name(w.kind),
            w.prefetchable ? " pref" : "     ", static_cast<unsigned long long>(w.cpu_base.value()),
            static_cast<unsigned long long>(w.bus_base), format_size(sz, sizeof(sz), w.size));
  }
  PciHostBridge::Stats s = pci_.stats();
  kprintf("  %zu functions, %zu BARs: %zu kept from the firmware, %zu assigned, %zu unassigned\n",
          s.functions, s.bars, s.firmware_bars, s.assigned_bars, s.unassigned_bars);
  for (size_t i = 0; i < pci_.num_devices(); ++i) {
    const PciDevice& dev = pci_.device(i);
    char name[8];
    kprintf("  %s %04x:%04x class %06x%s\n", dev.name(name, sizeof(name)), dev.vendor_id(),
            dev.device_id(), dev.class_code(), dev.is_bridge() ? " (bridge)" : "");
    for (unsigned b = 0; b < dev.num_bars(); ++b) {
      const PciBar& bar = dev.bar(b);
      if (bar.size == 0) continue;
      kprintf("    BAR%u %-5s%s %s at bus 0x%llx (cpu 0x%llx)%s\n", b, bar_kind_name(bar),
              bar.prefetchable ? " pref" : "", format_size(sz, sizeof(sz), bar.size),
              static_cast<unsigned long long>(bar.bus_addr),
              static_cast<unsigned long long>(bar.cpu_addr.value()),
              !bar.assigned() ? " UNASSIGNED" : (bar.firmware_assigned ? " (firmware)" : ""));
    }
  }
  for (size_t i = 0; i < num_edu_; ++i) {
    char name[8];
    kprintf("  edu %s: dma mask 0x%llx (%s)\n", edu_[i].dev->name(name, sizeof(name)),
            static_cast<unsigned long long>(edu_[i].dma_mask),
            edu_[i].mask_from_cmdline ? "edu_mask= on the command line" : "device default");
  }
}

Result<void> Devices::init(const KernelEnv& env) {
  HostDesc host;
  if (env.boot != nullptr && env.boot->fdt != nullptr) {
    TRY_ASSIGN(Fdt fdt, Fdt::from(env.boot->fdt));
    TRY_ASSIGN(host, host_from_fdt(fdt));
  } else {
    TRY_ASSIGN(host, host_from_arch());
  }
  PciConfigAccess* access;
  if (host.ecam.size != 0) {
    uint64_t bytes = (uint64_t{host.bus_end} - host.bus_start + 1) * kMiB;
    TRY_ASSIGN(volatile void* va, arch::mmio_map(host.ecam.base, bytes));
    g_ecam_access = EcamConfigAccess(MmioRegion(va, bytes), host.bus_start, host.bus_end);
    access = &g_ecam_access;
  } else {
    access = &g_port_access;
  }
  TRY(pci_.init(access, host.bus_start, host.bus_end,
                support::Span<const PciWindow>(host.windows, host.num_windows)));
  TRY(pci_.enumerate());
  source_ = host.source;
  ecam_ = host.ecam;
  dt_dma_coherent_ = host.dma_coherent;
  for (size_t i = 0; i < host.num_dma_windows; ++i) dma_windows_[i] = host.dma_windows[i];
  num_dma_windows_ = host.num_dma_windows;
  dt_dma_windows_ = host.dt_dma_windows;
  dma_ranges_error_ = host.dma_ranges_error;

  const char* cmdline =
      env.boot != nullptr && env.boot->cmdline != nullptr ? env.boot->cmdline : "";
  for (PciDevice* e = pci_.find(Devices::kEduVendor, Devices::kEduDevice); e != nullptr;
       e = pci_.find(Devices::kEduVendor, Devices::kEduDevice, e)) {
    if (num_edu_ == Devices::kMaxEdu) break;
    Edu& slot = edu_[num_edu_++];
    slot.dev = e;
    uint64_t mask = 0;
    if (e->address().bus == host.bus_start &&
        edu_mask_from_cmdline(cmdline, e->address().dev, &mask)) {
      slot.dma_mask = mask;
      slot.mask_from_cmdline = true;
    }
  }
  virtio_blk_ = pci_.find(Devices::kVirtioVendor, Devices::kVirtioBlkModern);
  if (virtio_blk_ == nullptr) {
    virtio_blk_ = pci_.find(Devices::kVirtioVendor, Devices::kVirtioBlkTransitional);
  }
  for (size_t i = 0; i < pci_.num_devices() && num_nvme_ < kMaxNvme; ++i) {
    if (pci_.device(i).class_code() == kNvmeClass) nvme_[num_nvme_++] = &pci_.device(i);
  }
  return support::ok();
}

DmaOp* Devices::dma_op(const PciDevice* dev) const {
  return iommu::dma_op_for(dev);
}

DeviceDma Devices::device_dma(const PciDevice* dev, uint64_t dma_mask) const {
  DeviceDma dma(dma_op(dev), dma_mask);
  // Behind an IOMMU domain the device's DMA addresses are I/O virtual addresses that the domain
  // allocates and translates itself; the bridge's windows describe which physical memory a bus
  // address reaches without translation, so they do not apply to the domain's mappings. (Where
  // the windows also limit the bus addresses a device may emit, the domain's I/O virtual
  // addresses would have to avoid the gaps between them, as Linux reserves them in its DMA
  // domains; this kernel's domains do not, and QEMU's IOMMUs translate every address.)
  if (num_dma_windows_ != 0 && iommu::domain_of(iommu::bdf_of(dev)) == nullptr) {
    auto r = dma.set_dma_windows(dma_windows_, num_dma_windows_);
    // The windows were checked at init (none empty, none wrapping, at most kMaxDmaWindows).
    KASSERT(r.ok(), "the bridge's DMA windows were refused");
  }
  return dma;
}

void Devices::print_dma_ranges() const {
  if (dma_ranges_error_ != ErrorCode::kOk) {
    kprintf("pci: dma-ranges: not used (%s)\n", error_code_name(dma_ranges_error_));
    return;
  }
  if (num_dma_windows_ == 0) {
    kprintf("pci: dma-ranges: none\n");
    return;
  }
  kprintf("pci: dma-ranges: %zu window%s", num_dma_windows_, num_dma_windows_ == 1 ? "" : "s");
  if (dt_dma_windows_ > num_dma_windows_) kprintf(" (of %zu in the device tree)", dt_dma_windows_);
  kprintf("\n");
  char sz[32];
  for (size_t i = 0; i < num_dma_windows_; ++i) {
    const DmaWindow& w = dma_windows_[i];
    kprintf("  dma window cpu [0x%llx, 0x%llx) -> bus 0x%llx, %s\n",
            static_cast<unsigned long long>(w.cpu_base.value()),
            static_cast<unsigned long long>(w.cpu_base.value() + w.size),
            static_cast<unsigned long long>(w.dma_base.value()),
            format_size(sz, sizeof(sz), w.size));
  }
}

Result<Devices*> devices_init(const KernelEnv& env) {
  if (!g_initialized) {
    g_initialized = true;
    auto r = g_devices.init(env);
    if (!r.ok()) g_init_error = r.error();
  }
  if (g_init_error.code != ErrorCode::kOk) return g_init_error;
  return &g_devices;
}
