//! The recorder ops record their dispatches into: the pending command encoder and one compute pass open on
//! it for a whole chain of dispatches.

/// Where ops record their work: the pending command encoder and the compute pass open on it.
///
/// Why one pass for a whole chain: wgpu encodes every compute pass into a command buffer of its own, with a
/// barrier command buffer before it, so one pass per dispatch cost two command buffers and their host work
/// per op. Dispatches in one pass still get the barriers their buffers need (wgpu tracks each dispatch's
/// uses). A command that runs outside passes (a buffer copy or clear, a query resolve) ends the open pass.
pub struct Recorder {
    // Declared first so that it is dropped (the pass ended) before the encoder it records into.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: wgpu::CommandEncoder,
}

impl Recorder {
    pub(super) fn new(device: &wgpu::Device) -> Recorder {
        Recorder {
            pass: None,
            encoder: device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None }),
        }
    }

    /// The encoder, for commands outside compute passes: ends the open pass.
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.encoder
    }

    /// The open compute pass, begun if none is.
    pub(super) fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        let encoder = &mut self.encoder;
        self.pass.get_or_insert_with(|| {
            encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor::default())
                .forget_lifetime()
        })
    }

    pub(super) fn finish(mut self) -> wgpu::CommandBuffer {
        self.pass = None;
        self.encoder.finish()
    }
}
