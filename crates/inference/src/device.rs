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

/// The CPU's model name (Linux `/proc/cpuinfo`), for benchmark records.
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// The SIMD flags that decide which kernels can run, as `/proc/cpuinfo` reports them
/// (AMX included: candle uses it where the kernel grants it).
pub fn simd_flags() -> Vec<String> {
    const WANTED: [&str; 10] = [
        "avx2",
        "fma",
        "f16c",
        "avx_vnni",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "amx_tile",
        "amx_int8",
    ];
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return Vec::new();
    };
    let Some(line) = info.lines().find(|l| l.starts_with("flags")) else {
        return Vec::new();
    };
    let have: Vec<&str> = line.split_whitespace().collect();
    WANTED
        .iter()
        .filter(|f| have.contains(f))
        .map(|f| f.to_string())
        .collect()
}
