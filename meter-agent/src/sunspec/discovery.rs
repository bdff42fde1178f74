//! Finding a device's SunSpec models: the `SunS` marker at 40000, 0 or 50000, then the chain
//! of models, each `ID, L` followed by `L` registers, up to the end marker `0xFFFF`.
//!
//! Devices deviate from the chain rules in known ways, and discovery tolerates them: SMA and
//! Kostal have no end marker (the walk stops at the first unreadable address), some devices
//! answer the end marker's length register with an exception (the id is read on its own
//! then), and a chain can hold models we have no definition for (they are listed, not read).

use crate::transport::{LinkError, ModbusLink, Table};
use gridshare_sunspec::block::ModelBlock;
use gridshare_sunspec::models;

pub use gridshare_sunspec::{BASE_ADDRESSES, END_MODEL_ID, SUNS_MARKER};

/// Largest number of registers in one Modbus read request.
pub const MAX_READ: u16 = 125;

/// More models than any real device has: a walk that goes on longer is reading garbage.
const MAX_MODELS: usize = 64;

/// One model found in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLocation {
    /// Model id.
    pub id: u16,
    /// Address of the model's `ID` register.
    pub address: u16,
    /// Number of registers after `ID` and `L`.
    pub len: u16,
}

impl ModelLocation {
    /// Whether the agent has a definition for this model.
    pub fn is_known(&self) -> bool {
        models::definition(self.id).is_some()
    }
}

/// The result of discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SunSpecMap {
    /// Address of the `SunS` marker.
    pub base: u16,
    /// The models in chain order.
    pub models: Vec<ModelLocation>,
    /// Whether the chain ended with the `0xFFFF` marker (false: the walk stopped at an
    /// unreadable address, as on SMA and Kostal devices).
    pub end_marker: bool,
}

impl SunSpecMap {
    /// The first model with one of these ids, in the order of `ids` (preference order).
    pub fn first_of(&self, ids: &[u16]) -> Option<ModelLocation> {
        ids.iter()
            .find_map(|id| self.models.iter().find(|m| m.id == *id).copied())
    }

    /// Ids of models in the chain that the agent has no definition for.
    pub fn unknown_models(&self) -> Vec<u16> {
        self.models
            .iter()
            .filter(|m| !m.is_known())
            .map(|m| m.id)
            .collect()
    }
}

/// Why discovery or a model read failed.
#[derive(Debug, thiserror::Error)]
pub enum SunSpecError {
    /// The link failed (connect, timeout, transport).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// No `SunS` marker at any base address.
    #[error("no SunSpec marker 'SunS' at addresses {0:?}: not a SunSpec device, or wrong unit id")]
    NotSunSpec(Vec<u16>),
    /// A model's registers ran past the end of the address space.
    #[error("model {id} at {address} with length {len} runs past register 65535")]
    ChainOverflow {
        /// Model id.
        id: u16,
        /// Address of its `ID` register.
        address: u16,
        /// Its length.
        len: u16,
    },
    /// The model chain has more models than any real device.
    #[error("model chain longer than {MAX_MODELS} models: the device is returning garbage")]
    ChainTooLong,
    /// The block read back does not start with the model id found at discovery (the device
    /// was reconfigured or replaced): discovery must run again.
    #[error("expected model {expected} at {address}, found {found}: the model chain changed")]
    ModelMoved {
        /// The id found at discovery.
        expected: u16,
        /// The id read now.
        found: u16,
        /// Address of the `ID` register.
        address: u16,
    },
    /// The block could not be decoded.
    #[error("model {id}: {reason}")]
    Decode {
        /// Model id.
        id: u16,
        /// Why.
        reason: String,
    },
}

/// Finds the `SunS` marker and walks the model chain.
pub async fn discover(link: &mut ModbusLink) -> Result<SunSpecMap, SunSpecError> {
    let mut base = None;
    for candidate in BASE_ADDRESSES {
        match link.read(Table::Holding, candidate, 2).await {
            Ok(regs) if regs == SUNS_MARKER => {
                base = Some(candidate);
                break;
            }
            // Wrong registers or an exception: not here, try the next base.
            Ok(_) => {}
            Err(e) if e.is_exception() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let base = base.ok_or_else(|| SunSpecError::NotSunSpec(BASE_ADDRESSES.to_vec()))?;
    let mut models = Vec::new();
    let mut address = base + 2;
    let mut end_marker = false;
    loop {
        if models.len() >= MAX_MODELS {
            return Err(SunSpecError::ChainTooLong);
        }
        let header = match link.read(Table::Holding, address, 2).await {
            Ok(regs) => [regs[0], regs[1]],
            Err(e) if e.is_exception() => {
                // The end marker may be the last readable register (no L after it).
                match link.read(Table::Holding, address, 1).await {
                    Ok(regs) if regs[0] == END_MODEL_ID => end_marker = true,
                    Ok(_) => {}
                    Err(e) if e.is_exception() => {}
                    Err(e) => return Err(e.into()),
                }
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let [id, len] = header;
        if id == END_MODEL_ID {
            end_marker = true;
            break;
        }
        if id == 0 && len == 0 {
            // Zero-filled memory after the last model: a chain without end marker.
            break;
        }
        let next = address
            .checked_add(2)
            .and_then(|a| a.checked_add(len))
            .ok_or(SunSpecError::ChainOverflow { id, address, len })?;
        models.push(ModelLocation { id, address, len });
        address = next;
    }
    tracing::info!(
        target: "sunspec",
        base,
        models = ?models.iter().map(|m| m.id).collect::<Vec<_>>(),
        end_marker,
        "discovered SunSpec device"
    );
    Ok(SunSpecMap {
        base,
        models,
        end_marker,
    })
}

/// Reads one model block together with its `ID, L` header, in one request when it fits (so
/// every value and its scale factor come from the same instant), and checks the id.
///
/// Models longer than a Modbus request allows (more than 123 registers: model 160 with more
/// than five modules, some 7xx models) are read in consecutive requests; their scale factors
/// sit at the start of the block and are read with the first request.
pub async fn read_model(
    link: &mut ModbusLink,
    location: ModelLocation,
) -> Result<ModelBlock, SunSpecError> {
    let total = u32::from(location.len) + 2;
    let mut regs = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut address = location.address;
    let mut remaining = total;
    while remaining > 0 {
        let count = u16::try_from(remaining.min(u32::from(MAX_READ))).unwrap_or(MAX_READ);
        regs.extend(link.read(Table::Holding, address, count).await?);
        remaining -= u32::from(count);
        address = address.wrapping_add(count);
    }
    if regs[0] != location.id {
        return Err(SunSpecError::ModelMoved {
            expected: location.id,
            found: regs[0],
            address: location.address,
        });
    }
    ModelBlock::decode(location.id, &regs[2..]).map_err(|e| SunSpecError::Decode {
        id: location.id,
        reason: e.to_string(),
    })
}
