//! What several commands build from the configuration alike.

use crate::config::Config;
use crate::elastic;
use crate::pipeline::Pipelines;

/// The pipelines of `pipelines.dir`, loaded and checked.
pub(super) fn load_pipelines(config: &Config) -> anyhow::Result<Pipelines> {
    Ok(Pipelines::load_dir(
        &config.pipelines.dir,
        &config.index,
        &config.pipelines.decode,
    )?)
}

/// The names setup works with, from the configuration.
pub(super) fn layout(config: &Config) -> elastic::Layout<'_> {
    elastic::Layout {
        prefix: &config.index.prefix,
        dead_letter_index: &config.dead_letter.index,
        retention: &config.setup.retention_days,
    }
}
