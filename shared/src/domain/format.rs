//! `AudioFormat`: the allowlist of formats we store, with their content types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioFormat {
    Mp3,
    Wav,
    M4a,
    Ogg,
    Opus,
    Flac,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audio format; allowed: mp3, wav, m4a, ogg, opus, flac")]
pub struct UnknownFormat;

impl AudioFormat {
    pub const ALL: [AudioFormat; 6] = [
        Self::Mp3,
        Self::Wav,
        Self::M4a,
        Self::Ogg,
        Self::Opus,
        Self::Flac,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mp3 => "mp3",
            Self::Wav => "wav",
            Self::M4a => "m4a",
            Self::Ogg => "ogg",
            Self::Opus => "opus",
            Self::Flac => "flac",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Mp3 => "audio/mpeg",
            Self::Wav => "audio/wav",
            Self::M4a => "audio/mp4",
            Self::Ogg => "audio/ogg",
            Self::Opus => "audio/opus",
            Self::Flac => "audio/flac",
        }
    }
}

impl FromStr for AudioFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or(UnknownFormat)
    }
}

impl fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_round_trips_and_rejects_others() {
        for f in AudioFormat::ALL {
            assert_eq!(f.as_str().parse::<AudioFormat>().unwrap(), f);
            assert!(f.content_type().starts_with("audio/"));
        }
        for bad in ["MP3", "exe", "", "mp3 ", "../mp3"] {
            assert!(bad.parse::<AudioFormat>().is_err());
        }
    }
}
