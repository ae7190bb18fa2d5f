//! Opening the test CUDA device. Without one (no driver, no NVRTC, no NVIDIA GPU) the tests print a skip
//! line, unless `LOWBIT_REQUIRE_CUDA=1`, where that is a failure.
#![allow(dead_code)]

#[cfg(feature = "cuda")]
pub fn cuda() -> Option<lowbit::backend::cuda::CudaBackend> {
    use std::sync::OnceLock;
    static CUDA: OnceLock<Option<lowbit::backend::cuda::CudaBackend>> = OnceLock::new();
    CUDA.get_or_init(|| match lowbit::backend::cuda::CudaBackend::open(0) {
        Ok(b) => {
            let (major, minor) = b.compute_capability();
            println!(
                "cuda: {} (sm_{major}{minor})",
                lowbit::backend::Backend::name(&b)
            );
            Some(b)
        }
        Err(e) => {
            if std::env::var("LOWBIT_REQUIRE_CUDA").as_deref() == Ok("1") {
                panic!("LOWBIT_REQUIRE_CUDA=1 but no CUDA device: {e}");
            }
            println!("skipped: no CUDA device ({e})");
            None
        }
    })
    .clone()
}

/// The test CUDA device as a strict `Device`, where there is one.
pub fn cuda_device() -> Option<lowbit::Device> {
    #[cfg(feature = "cuda")]
    {
        let strict = lowbit::runtime::RecoveryPolicy {
            strict: true,
            ..lowbit::runtime::RecoveryPolicy::default()
        };
        cuda().map(|c| lowbit::Device::from_backend(std::sync::Arc::new(c)).with_policy(strict))
    }
    #[cfg(not(feature = "cuda"))]
    {
        None
    }
}
