//! `hostaction new`: a new action project.

use std::path::PathBuf;

use hostaction_runtime::Error;

use crate::scaffold::{self, Lang};

/// `hostaction new` flags.
#[derive(clap::Args)]
pub struct NewCommand {
    /// The language to write it in.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The action's name: lowercase letters, digits and `-`.
    name: String,
    /// Where to write it (must not exist, or be empty) [default: ./NAME].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl NewCommand {
    /// Writes the project and says where.
    pub fn execute(self) -> Result<u8, Error> {
        let dir = self.dir.unwrap_or_else(|| PathBuf::from(&self.name));
        let written = scaffold::create(self.lang, &self.name, &dir)?;
        crate::common::emit(&format!(
            "wrote {} files to {}\nnext: its README.md says how to build, inspect, run and push it\n",
            written.len(),
            dir.display()
        ));
        Ok(0)
    }
}
