//! Which device the model runs on: CUDA when built with the `cuda` feature and a GPU is
//! present, the CPU otherwise.

use candle_core::Device;

/// Picks the best device this build can use; `force_cpu` pins the CPU (tests, benchmarks).
pub fn select(force_cpu: bool) -> Device {
    if force_cpu {
        return Device::Cpu;
    }
    #[cfg(feature = "cuda")]
    if let Ok(device) = Device::new_cuda(0) {
        return device;
    }
    Device::Cpu
}

/// Human-readable device name for logs and `inspect`.
pub fn describe(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// High-water mark of this process's resident memory (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
