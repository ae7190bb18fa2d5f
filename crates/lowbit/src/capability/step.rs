//! Recorded steps: a run of ops that a model queues again and again with only its position and token ids
//! changing (a decode step). A backend that can record work (CUDA graphs) records one such step the second
//! time it runs and replays the recording afterwards, reading the position and the ids from device memory
//! the host writes before each replay; other backends run the ops one by one every time.

/// Which step: the model, its cache and its weights' selection (adapter). A recording bakes in every
/// buffer it touched, so a key names exactly one set of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepKey(pub u64);

/// How one run of a step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepRun {
    /// Op by op (the first run, a backend that records nothing, or a step that could not be recorded).
    OpByOp,
    /// Recorded, then run from the recording.
    Recorded,
    /// Replayed from an earlier recording.
    Replayed,
}

/// What changes between two runs of one step: the position of its first token in the KV cache and the
/// token ids it embeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepArgs {
    pub pos: usize,
    pub tokens: Vec<u32>,
}
