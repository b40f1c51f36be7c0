//! The NVML meter: the GPU's total-energy counter (millijoules since driver load, Volta and
//! later) read around windows of real runs. NVML is loaded at run time: no NVIDIA driver
//! means "unavailable (why)", never a failure to build or a panic.

use super::{EnergyCounter, Figures, Meter, Windowing, measure_windows};
use crate::workload::Workload;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

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

pub struct NvmlCounter {
    nvml: Arc<nvml_wrapper::Nvml>,
    index: u32,
    origin: Instant,
}

impl EnergyCounter for NvmlCounter {
    fn millijoules(&self) -> anyhow::Result<u64> {
        let d = self.nvml.device_by_index(self.index)?;
        Ok(d.total_energy_consumption()?)
    }

    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    fn sleep(&self, seconds: f64) {
        std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    }
}

pub struct NvmlMeter {
    counter: NvmlCounter,
    windowing: Windowing,
}

impl NvmlMeter {
    /// A meter for the GPU at `bus_id`, checking once that its counter can be read.
    pub fn for_bus(bus_id: &str) -> Result<NvmlMeter, String> {
        let index = device_for_bus(bus_id)?;
        let counter = NvmlCounter {
            nvml: nvml()?,
            index,
            origin: Instant::now(),
        };
        counter
            .millijoules()
            .map_err(|e| format!("NVML energy counter of device {index}: {e}"))?;
        Ok(NvmlMeter {
            counter,
            windowing: Windowing::default(),
        })
    }
}

impl Meter for NvmlMeter {
    fn source(&self) -> &'static str {
        "nvml"
    }

    fn measure(
        &self,
        workload: &Workload,
        run: &mut dyn FnMut(u64) -> anyhow::Result<()>,
    ) -> anyhow::Result<Figures> {
        measure_windows(&self.counter, self.windowing, workload.bytes(), run)
    }
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
