//! The process's NVML handle, loaded at run time (no NVIDIA driver: "unavailable (why)"),
//! and finding a device by its PCI bus id: what the energy meter and the topology share.

use std::sync::{Arc, OnceLock};

/// The process's NVML handle, or why there is none.
pub fn nvml() -> Result<Arc<nvml_wrapper::Nvml>, String> {
    static NVML: OnceLock<Result<Arc<nvml_wrapper::Nvml>, String>> = OnceLock::new();
    NVML.get_or_init(|| {
        nvml_wrapper::Nvml::init()
            .map(Arc::new)
            .map_err(|e| format!("NVML unavailable ({e})"))
    })
    .clone()
}

/// PCI bus ids differ in how they are written ("00000000:01:00.0" vs "0000:01:00.0"):
/// compare domain, bus, device and function as numbers.
pub fn same_pci_bus(a: &str, b: &str) -> bool {
    fn parts(s: &str) -> Option<Vec<u64>> {
        let s = s.trim().to_lowercase();
        let (dom, rest) = s.split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (dev, func) = rest.split_once('.')?;
        [dom, bus, dev, func]
            .iter()
            .map(|x| u64::from_str_radix(x, 16).ok())
            .collect()
    }
    matches!((parts(a), parts(b)), (Some(x), Some(y)) if x == y)
}

/// The NVML device index with this PCI bus id.
pub fn device_for_bus(bus_id: &str) -> Result<u32, String> {
    let n = nvml()?;
    let count = n
        .device_count()
        .map_err(|e| format!("NVML device count: {e}"))?;
    for i in 0..count {
        let Ok(d) = n.device_by_index(i) else {
            continue;
        };
        if let Ok(p) = d.pci_info()
            && same_pci_bus(&p.bus_id, bus_id)
        {
            return Ok(i);
        }
    }
    Err(format!("no NVML device at PCI bus {bus_id}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pci_bus_ids_compare_as_numbers() {
        assert!(super::same_pci_bus("00000000:1B:00.0", "0000:1b:00.0"));
        assert!(!super::same_pci_bus("0000:1b:00.0", "0000:1c:00.0"));
        assert!(!super::same_pci_bus("", "0000:1c:00.0"));
    }
}
