//! How devices are connected, as `nvidia-smi topo -m` names it: `NV18` (18 NVLinks between
//! the pair), or the PCIe path (`PIX` one switch, `PXB` several, `PHB` a host bridge, `NODE`
//! one NUMA node, `SYS` across NUMA nodes). Read from NVML, matched to devices by PCI bus id;
//! without NVML the topology is "unknown (why)", never an error.

use super::nvml::{device_for_bus, nvml, same_pci_bus};
use crate::backend::DeviceInfo;
use nvml_wrapper::enum_wrappers::device::TopologyLevel;

const NVLINK_MAX_LINKS: u32 = 18;

/// The label for a pair: NVLinks win; otherwise the PCIe level.
pub fn label(nvlinks: u32, pcie: Option<TopologyLevel>) -> String {
    if nvlinks > 0 {
        return format!("NV{nvlinks}");
    }
    match pcie {
        Some(TopologyLevel::Internal) => "INT",
        Some(TopologyLevel::Single) => "PIX",
        Some(TopologyLevel::Multiple) => "PXB",
        Some(TopologyLevel::HostBridge) => "PHB",
        Some(TopologyLevel::Node) => "NODE",
        Some(TopologyLevel::System) => "SYS",
        None => "?",
    }
    .to_string()
}

/// Active NVLinks from the device at `from` whose other end is the device at `to`.
pub fn nvlinks_between(from: &str, to: &str) -> Result<u32, String> {
    let n = nvml()?;
    let dev = n
        .device_by_index(device_for_bus(from)?)
        .map_err(|e| format!("NVML device {from}: {e}"))?;
    let mut count = 0;
    // NVML_NVLINK_MAX_LINKS: 18 on Hopper (NVLink 4), the most any device has.
    for link in 0..NVLINK_MAX_LINKS {
        let l = dev.link_wrapper_for(link);
        if !l.is_active().unwrap_or(false) {
            continue;
        }
        if let Ok(remote) = l.remote_pci_info()
            && same_pci_bus(&remote.bus_id, to)
        {
            count += 1;
        }
    }
    Ok(count)
}

fn pcie_level(a: &str, b: &str) -> Result<TopologyLevel, String> {
    let n = nvml()?;
    let da = n
        .device_by_index(device_for_bus(a)?)
        .map_err(|e| format!("NVML device {a}: {e}"))?;
    let db = n
        .device_by_index(device_for_bus(b)?)
        .map_err(|e| format!("NVML device {b}: {e}"))?;
    da.topology_common_ancestor(db)
        .map_err(|e| format!("NVML topology: {e}"))
}

/// The label between two devices given by PCI bus id, e.g. `NV18` or `SYS`.
pub fn between(a: &str, b: &str) -> Result<String, String> {
    let links = nvlinks_between(a, b)?;
    Ok(label(links, pcie_level(a, b).ok()))
}

/// `NV18 (NVLink x18)` between two cuda devices of the backend, for link results.
pub fn describe(a: &DeviceInfo, b: &DeviceInfo) -> String {
    match (&a.pci_bus_id, &b.pci_bus_id) {
        (Some(x), Some(y)) => match between(x, y) {
            Ok(l) if l.starts_with("NV") => format!("{l}: NVLink x{}", &l[2..]),
            Ok(l) => format!("{l}: PCIe"),
            Err(why) => format!("topology unknown: {why}"),
        },
        _ => "topology unknown: no PCI bus id".into(),
    }
}

/// The matrix `decodelab devices` prints: one row and column per device, `X` on the
/// diagonal. Err when NVML cannot tell.
pub fn matrix(devices: &[DeviceInfo]) -> Result<Vec<Vec<String>>, String> {
    let buses: Vec<&str> = devices
        .iter()
        .map(|d| d.pci_bus_id.as_deref().ok_or("a device has no PCI bus id"))
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for (i, a) in buses.iter().enumerate() {
        let mut row = Vec::new();
        for (j, b) in buses.iter().enumerate() {
            row.push(if i == j { "X".into() } else { between(a, b)? });
        }
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_nvidia_smi_topo() {
        assert_eq!(label(18, Some(TopologyLevel::System)), "NV18");
        assert_eq!(label(0, Some(TopologyLevel::Single)), "PIX");
        assert_eq!(label(0, Some(TopologyLevel::System)), "SYS");
        assert_eq!(label(0, None), "?");
    }

    #[test]
    fn without_nvml_or_bus_ids_the_topology_is_unknown_not_a_panic() {
        let dev = |bus: Option<&str>| DeviceInfo {
            index: 0,
            name: "gpu".into(),
            memory_bytes: None,
            details: vec![],
            pci_bus_id: bus.map(String::from),
            emulated: false,
        };
        let err = matrix(&[dev(None), dev(None)]).expect_err("no bus ids");
        assert!(err.contains("PCI bus id"), "{err}");
        let d = describe(&dev(None), &dev(Some("0000:01:00.0")));
        assert!(d.starts_with("topology unknown"), "{d}");
        // Where NVML is absent (this CI machine), asking is an error with the reason.
        if nvml().is_err() {
            assert!(between("0000:01:00.0", "0000:02:00.0").is_err());
        }
    }
}
