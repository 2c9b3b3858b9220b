// The IOMMU part of the RISC-V port (testkernel/iommu_arch.h): the RISC-V IOMMU as a PCI function
// (base class 08h, sub-class 06h, programming interface 00h, the specification's "IOMMU as a PCIe
// device"; QEMU's riscv-iommu-pci) found by the test kernel's PCI enumeration, its registers in
// BAR0, run by RiscvIommu (dmakit/arch/riscv_iommu.h). It translates the DMA of the functions on
// its own bus; the requester id is the function's bus/device/function as is.
//
// QEMU's model comes out of reset with ddtp Off, which blocks every device's DMA: when the driver
// cannot be brought up, or the kernel does not want the IOMMU, the unit is put in Bare mode
// (pass-through) so that the direct path works.
#include "arch/riscv64/testkernel/irq.h"
#include "dmakit/arch/riscv_iommu.h"
#include "testkernel/devices.h"
#include "testkernel/iommu_arch.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"

namespace {

constexpr uint32_t kClassIommu = 0x080600;  // class << 16 | subclass << 8 | prog-if
// IDs QEMU's model has carried: Rivos' (1efd:edf1) and the generic Red Hat one (1b36:0014).
constexpr uint16_t kRivosVendor = 0x1efd;
constexpr uint16_t kRivosIommu = 0xedf1;
constexpr uint16_t kRedHatVendor = 0x1b36;
constexpr uint16_t kRedHatRiscvIommu = 0x0014;

constinit RiscvIommu g_unit;
bool g_init_done = false;
IommuUnit* g_result = nullptr;

PciDevice* find_iommu(PciHostBridge& pci) {
  for (size_t i = 0; i < pci.num_devices(); ++i) {
    PciDevice& d = pci.device(i);
    if ((d.class_code() & 0xFFFFFF) == kClassIommu ||
        (d.vendor_id() == kRivosVendor && d.device_id() == kRivosIommu) ||
        (d.vendor_id() == kRedHatVendor && d.device_id() == kRedHatRiscvIommu)) {
      return &d;
    }
  }
  return nullptr;
}

uint16_t bdf_of(PciAddress a) {
  return static_cast<uint16_t>(a.bus << 8 | a.dev << 3 | a.fn);
}

uint64_t clock_ns() {
  return arch::now_ns();
}

IommuUnit* bring_up() {
  auto devs = devices_init(kernel_env());
  if (!devs.ok()) {
    kprintf("iommu: no PCI host bridge (%s); devices use the direct path\n",
            error_code_name(devs.code()));
    return nullptr;
  }
  PciDevice* fn = find_iommu((*devs)->pci());
  if (fn == nullptr) {
    kprintf(
        "iommu: no RISC-V IOMMU PCI function (class 08:06) found; devices use the direct "
        "path\n");
    return nullptr;
  }
  char name[16];
  fn->name(name, sizeof(name));
  // Bus mastering: the unit reads its queues and tables and writes fault records by DMA.
  if (auto r = fn->enable(true); !r.ok()) {
    kprintf(
        "iommu: riscv-iommu at %s: cannot enable the function (%s); devices use the direct "
        "path\n",
        name, error_code_name(r.code()));
    return nullptr;
  }
  auto bar = fn->map_bar(0);
  if (!bar.ok() || bar->size() < 4096) {
    kprintf("iommu: riscv-iommu at %s: BAR0 not usable (%s); devices use the direct path\n", name,
            bar.ok() ? "smaller than 4 KiB" : error_code_name(bar.code()));
    return nullptr;
  }
  RiscvIommuConfig cfg;
  cfg.regs = bar->base();
  cfg.pfa = kernel_env().pfa;
  cfg.own_device_id = arch::iommu_device_id(bdf_of(fn->address()));
  cfg.now_ns = &clock_ns;
  if (auto r = g_unit.init(cfg); !r.ok()) {
    auto bare = RiscvIommu::release_to_bare(bar->base(), &clock_ns, cfg.timeout_ns);
    kprintf("iommu: riscv-iommu at %s failed to initialise (%s); %s\n", name,
            error_code_name(r.code()),
            bare.ok() ? "unit left in Bare mode, devices use the direct path"
                      : "could not even set Bare mode: DMA through it stays blocked");
    return nullptr;
  }
  kprintf(
      "iommu: riscv-iommu at %s (requester id %04x, version %llu.%llu), first stage %s, "
      "%u-level device directory of %s device contexts, every device blocked until attached\n",
      name, static_cast<unsigned>(cfg.own_device_id),
      static_cast<unsigned long long>((g_unit.capabilities() >> 4) & 0xF),
      static_cast<unsigned long long>(g_unit.capabilities() & 0xF), g_unit.stage_mode(),
      g_unit.ddt_levels(), g_unit.extended_dc() ? "64-byte extended" : "32-byte base");
  return &g_unit;
}

}  // namespace

namespace arch {

IommuUnit* iommu_init(const BootInfo&) {
  if (g_init_done) return g_result;
  g_init_done = true;
  g_result = bring_up();
  return g_result;
}

uint32_t iommu_device_id(uint16_t bdf) {
  return bdf;
}

size_t iommu_msi_pages(PhysAddr* pages, size_t max) {
  return riscv::imsic_s_file_pages(pages, max);
}

}  // namespace arch
