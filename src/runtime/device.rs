//! Where a session runs: the CPU or a CUDA device (`cpu`, `cuda:N`: the `--device` flags of both
//! binaries and `device` in model.toml), and putting a session builder on that device.
//!
//! ONNX Runtime silently falls back to the CPU when an execution provider cannot be registered;
//! here registration errors are fatal (`error_on_failure`) and are turned into one line that
//! says what is missing (the GPU build of ONNX Runtime, the NVIDIA driver, a device), because a
//! server that meant to run on a GPU and quietly runs on the CPU is a silent 10-100x slowdown.

use std::path::Path;

use ort::session::builder::SessionBuilder;

/// Where the graphs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The CPU execution provider.
    #[default]
    Cpu,
    /// CUDA device N.
    Cuda(i32),
}

impl Device {
    /// True for a CUDA device.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        s.strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .filter(|n: &i32| *n >= 0)
            .map(Device::Cuda)
            .ok_or_else(|| format!("invalid device {s:?} (expected cpu or cuda:N)"))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl serde::Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A device that cannot be used, in one line (no ONNX Runtime stack of messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeviceError(pub String);

/// How the CUDA execution provider is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaOptions {
    /// ONNX Runtime's CUDA graph capture.
    pub cuda_graph: bool,
    /// TF32 math for convolutions and MatMuls (ONNX Runtime's default).
    pub tf32: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            cuda_graph: false,
            tf32: true,
        }
    }
}

/// Puts `builder` on `device`: nothing to do for the CPU; for CUDA, loads the CUDA libraries
/// shipped next to ONNX Runtime (`super::cuda`) and registers the CUDA execution provider,
/// failing instead of falling back to the CPU.
pub fn place(
    builder: SessionBuilder,
    device: Device,
    options: CudaOptions,
) -> Result<SessionBuilder, DeviceError> {
    let Device::Cuda(n) = device else {
        return Ok(builder);
    };
    let library = super::init_onnxruntime().map_err(|e| DeviceError(e.to_string()))?;
    let preloaded = super::cuda::preload(library);
    let cuda = ort::ep::CUDA::default()
        .with_device_id(n)
        .with_cuda_graph(options.cuda_graph)
        .with_tf32(options.tf32)
        .build()
        .error_on_failure();
    builder
        .with_execution_providers([cuda])
        .map_err(|e| explain(device, library, preloaded.as_ref().err(), &e.to_string()))
}

/// The one-line reason a CUDA session could not be registered or created, from ONNX Runtime's
/// message `ort` and what is known about the loaded library.
pub fn explain(
    device: Device,
    library: &Path,
    preload_error: Option<&String>,
    ort: &str,
) -> DeviceError {
    // ONNX Runtime's CUDA errors read "... CUDA failure N: TEXT ; GPU=... ; file=...": the
    // part worth a line is "CUDA failure N: TEXT".
    let failure = ort
        .find("CUDA failure")
        .map(|i| ort[i..].split(" ;").next().unwrap_or_default().trim());
    let first: String = ort
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .take(300)
        .collect();
    let dir = library.parent().unwrap_or(Path::new("."));
    let reason = if !dir.join("libonnxruntime_providers_cuda.so").is_file() {
        format!(
            "the loaded ONNX Runtime ({}) is the CPU build; run `make build CUDA=1` (fetches \
             onnxruntime-gpu with CUDA 13 and cuDNN 9), or set ORT_DYLIB_PATH to the \
             libonnxruntime.so of onnxruntime-gpu, or use --device cpu",
            library.display()
        )
    } else if let Some(e) = preload_error {
        format!(
            "cannot load the CUDA libraries next to {}: {e}",
            library.display()
        )
    } else if ort.contains("libcuda.so") {
        "no NVIDIA driver on this machine (libcuda.so.1 not found); use --device cpu".to_string()
    } else if ort.contains("no CUDA-capable device") || ort.contains("invalid device ordinal") {
        format!(
            "no such CUDA device on this machine ({}); use --device cpu or another cuda:N",
            failure.unwrap_or(&first)
        )
    } else if ort.contains("driver version is insufficient") {
        format!(
            "the NVIDIA driver is too old for CUDA 13 (needs 580 or newer: {}); use --device cpu",
            failure.unwrap_or(&first)
        )
    } else {
        format!(
            "the CUDA execution provider failed: {}",
            failure.unwrap_or(&first)
        )
    };
    DeviceError(format!("{device}: {}", reason.replace('\n', " ")))
}

/// Checks that sessions can run on `device` by building and running a one-node graph there:
/// a server asked for a GPU must find out at start-up, not at its first request. Instant on
/// the CPU.
pub fn probe(device: Device) -> Result<(), DeviceError> {
    if !device.is_cuda() {
        return Ok(());
    }
    let library = super::init_onnxruntime().map_err(|e| DeviceError(e.to_string()))?;
    let env = super::environment().map_err(|e| DeviceError(e.to_string()))?;
    let fail = |e: &dyn std::fmt::Display| explain(device, library, None, &e.to_string());
    let builder = ort::session::Session::builder(env).map_err(|e| fail(&e))?;
    let mut session = place(builder, device, CudaOptions::default())?
        .commit_from_memory(&probe_model())
        .map_err(|e| fail(&e))?;
    let x = ort::value::Tensor::from_array(([2usize], vec![-1.0f32, 2.0])).map_err(|e| fail(&e))?;
    let out = session.run(ort::inputs!["x" => x]).map_err(|e| fail(&e))?;
    let (_, y) = out["y"].try_extract_tensor::<f32>().map_err(|e| fail(&e))?;
    if y != [0.0, 2.0] {
        return Err(DeviceError(format!(
            "{device}: a Relu on the device returned {y:?} instead of [0, 2]"
        )));
    }
    Ok(())
}

/// `y = Relu(x)` over a float vector of any length: the smallest graph that runs a kernel.
fn probe_model() -> Vec<u8> {
    use super::onnx_proto::*;
    use prost::Message;
    let vector = |name: &str| ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: DT_FLOAT,
                shape: Some(TensorShapeProto {
                    dim: vec![Dimension {
                        value: Some(DimValue::DimParam("n".into())),
                    }],
                }),
            }),
        }),
        doc_string: String::new(),
    };
    ModelProto {
        ir_version: IR_VERSION,
        producer_name: "caliper".into(),
        graph: Some(GraphProto {
            node: vec![NodeProto {
                input: vec!["x".into()],
                output: vec!["y".into()],
                name: "relu".into(),
                op_type: "Relu".into(),
                ..Default::default()
            }],
            name: "probe".into(),
            input: vec![vector("x")],
            output: vec![vector("y")],
            ..Default::default()
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_print_and_deserialize() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda:1".parse::<Device>(), Ok(Device::Cuda(1)));
        for bad in ["gpu", "cuda:x", "cuda:", "cuda:-1", "CUDA:0", "cuda0"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        #[derive(serde::Deserialize)]
        struct T {
            d: Device,
        }
        assert_eq!(
            toml::from_str::<T>("d = \"cuda:0\"").unwrap().d,
            Device::Cuda(0)
        );
        let e = toml::from_str::<T>("d = \"tpu\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("expected cpu or cuda:N"), "{e}");
    }

    #[test]
    fn reasons_name_what_is_missing_in_one_line() {
        let cpu_build = Path::new("/nonexistent/lib/libonnxruntime.so");
        let e = explain(Device::Cuda(0), cpu_build, None, "boom\nstack").0;
        assert!(
            e.starts_with("cuda:0: the loaded ONNX Runtime") && e.contains("CUDA=1"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        // With a provider next to the library, ONNX Runtime's reason decides.
        let dir = std::env::temp_dir().join(format!("caliper-device-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libonnxruntime_providers_cuda.so"), b"").unwrap();
        let lib = dir.join("libonnxruntime.so");
        let driver = "Failed to load library libonnxruntime_providers_cuda.so with error: \
                      libcuda.so.1: cannot open shared object file";
        let e = explain(Device::Cuda(1), &lib, None, driver).0;
        assert_eq!(
            e,
            "cuda:1: no NVIDIA driver on this machine (libcuda.so.1 not found); use --device cpu"
        );
        let e = explain(
            Device::Cuda(0),
            &lib,
            None,
            "CUDA failure 100: no CUDA-capable device is detected ; GPU=0\nmore",
        )
        .0;
        assert!(
            e.contains("no such CUDA device") && !e.contains("more"),
            "{e}"
        );
        // Seen with a stub libcuda.so.1 standing in for a driver (this machine has no GPU).
        let old = "/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc:63 \
                   static onnxruntime::CUDAExecutionProviderInfo ... [ONNXRuntimeError] : 1 : FAIL : \
                   Parse Failed to parse provider option \"device_id\": CUDA failure 35: CUDA driver \
                   version is insufficient for CUDA runtime version ; GPU=-1 ; hostname=vm ; file=x";
        let e = explain(Device::Cuda(0), &lib, None, old).0;
        assert_eq!(
            e,
            "cuda:0: the NVIDIA driver is too old for CUDA 13 (needs 580 or newer: CUDA failure 35: \
             CUDA driver version is insufficient for CUDA runtime version); use --device cpu"
        );
        let missing = "libcudnn.so.9: cannot open".to_string();
        let e = explain(Device::Cuda(0), &lib, Some(&missing), driver).0;
        assert!(
            e.contains("cannot load the CUDA libraries") && e.contains("libcudnn"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cpu_needs_no_probe() {
        assert_eq!(probe(Device::Cpu), Ok(()));
    }
}
