//! The NVML meter: the GPU's total-energy counter (millijoules since driver load, Volta and
//! later) read around windows of real runs. NVML is loaded at run time: no NVIDIA driver
//! means "unavailable (why)", never a failure to build or a panic.

use super::{EnergyCounter, Figures, Meter, Windowing, measure_windows};
use crate::backend::cuda::nvml::{device_for_bus, nvml};
use crate::workload::Workload;
use std::sync::Arc;
use std::time::Instant;

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
