//! A small Modbus server over TCP — MBAP framing (Modbus TCP) or RTU framing with CRC
//! (RTU over TCP) — serving holding and input registers from a shared [`RegisterBank`].
//!
//! It backs `meter-agent simulate-device` and the agent's tests. It is written here rather
//! than taken from tokio-modbus because tests must make it misbehave the way real devices do:
//! exception replies, silence until the client times out, malformed frames, and vanishing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Function code 3, read holding registers.
pub const READ_HOLDING: u8 = 3;
/// Function code 4, read input registers.
pub const READ_INPUT: u8 = 4;

/// Modbus exception: illegal function.
pub const ILLEGAL_FUNCTION: u8 = 1;
/// Modbus exception: illegal data address.
pub const ILLEGAL_DATA_ADDRESS: u8 = 2;
/// Modbus exception: illegal data value (e.g. a count above 125).
pub const ILLEGAL_DATA_VALUE: u8 = 3;
/// Modbus exception: server device failure.
pub const SERVER_DEVICE_FAILURE: u8 = 4;

/// How the server misbehaves for the next requests, set by a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Answer correctly.
    #[default]
    None,
    /// Answer every read with this exception code.
    Exception(u8),
    /// Read the request, never answer (the client must time out).
    Silence,
    /// Answer with a frame whose byte count does not match the request.
    Malformed,
    /// Close the connection on the next request.
    Disconnect,
}

#[derive(Debug, Default)]
struct Registers {
    holding: BTreeMap<u16, u16>,
    input: BTreeMap<u16, u16>,
    fault: Fault,
    requests: u64,
}

/// Register contents shared between the server and whoever drives it (a simulation, a test).
/// Addresses that were never written do not exist: reading them gives "illegal data address",
/// as on a real device.
#[derive(Debug, Clone, Default)]
pub struct RegisterBank {
    inner: Arc<Mutex<Registers>>,
}

impl RegisterBank {
    /// An empty bank.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registers> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes holding registers starting at `address`.
    pub fn set_holding(&self, address: u16, values: &[u16]) {
        let mut regs = self.lock();
        for (addr, v) in (address..=u16::MAX).zip(values) {
            regs.holding.insert(addr, *v);
        }
    }

    /// Writes input registers starting at `address`.
    pub fn set_input(&self, address: u16, values: &[u16]) {
        let mut regs = self.lock();
        for (addr, v) in (address..=u16::MAX).zip(values) {
            regs.input.insert(addr, *v);
        }
    }

    /// Removes every holding and input register.
    pub fn clear(&self) {
        let mut regs = self.lock();
        regs.holding.clear();
        regs.input.clear();
    }

    /// Reads holding registers as a client would see them.
    pub fn holding(&self, address: u16, count: u16) -> Option<Vec<u16>> {
        let regs = self.lock();
        read(&regs.holding, address, count)
    }

    /// Sets how the server answers from now on.
    pub fn set_fault(&self, fault: Fault) {
        self.lock().fault = fault;
    }

    /// Number of requests received so far.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Applies several changes atomically with respect to reads, so a client never sees half
    /// an update (a device updates a model block as a whole).
    pub fn update(&self, f: impl FnOnce(&mut dyn FnMut(u16, &[u16]))) {
        let mut regs = self.lock();
        let mut write = |address: u16, values: &[u16]| {
            for (addr, v) in (address..=u16::MAX).zip(values) {
                regs.holding.insert(addr, *v);
            }
        };
        f(&mut write);
    }
}

fn read(map: &BTreeMap<u16, u16>, address: u16, count: u16) -> Option<Vec<u16>> {
    let end = address.checked_add(count.checked_sub(1)?)?;
    let values: Vec<u16> = map.range(address..=end).map(|(_, v)| *v).collect();
    (values.len() == usize::from(count)).then_some(values)
}

/// Framing on the TCP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Modbus TCP: MBAP header, no CRC.
    Tcp,
    /// Modbus RTU frames (unit id, PDU, CRC-16) carried over TCP, as by serial-to-Ethernet
    /// adapters that do not convert the protocol.
    RtuOverTcp,
}

/// A running server; dropping the handle does not stop it, [`RegisterServer::stop`] does.
#[derive(Debug)]
pub struct RegisterServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RegisterServer {
    /// Binds and starts serving `bank` for unit id `unit` (0 and 255 are also answered, as many
    /// TCP devices do).
    pub async fn start(
        listen: SocketAddr,
        bank: RegisterBank,
        unit: u8,
        framing: Framing,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let bank = bank.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, bank, unit, framing).await {
                        tracing::debug!(target: "register_server", %peer, "connection ended: {e}");
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// Stops accepting connections (open connections end when the client closes them).
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    bank: RegisterBank,
    unit: u8,
    framing: Framing,
) -> std::io::Result<()> {
    loop {
        let (header, request_unit, pdu) = match framing {
            Framing::Tcp => {
                let mut mbap = [0u8; 7];
                stream.read_exact(&mut mbap).await?;
                let len = usize::from(u16::from_be_bytes([mbap[4], mbap[5]]));
                if !(2..=254).contains(&len) {
                    return Err(std::io::Error::other("bad MBAP length"));
                }
                let mut pdu = vec![0u8; len - 1];
                stream.read_exact(&mut pdu).await?;
                (Some([mbap[0], mbap[1]]), mbap[6], pdu)
            }
            Framing::RtuOverTcp => {
                // Only read requests are served: unit, function, address, count, CRC = 8 bytes.
                let mut frame = [0u8; 8];
                stream.read_exact(&mut frame).await?;
                if crc16(&frame[..6]).to_le_bytes() != [frame[6], frame[7]] {
                    // A real RTU slave ignores frames with a bad CRC.
                    continue;
                }
                (None, frame[0], frame[1..6].to_vec())
            }
        };
        let fault = {
            let mut regs = bank.lock();
            regs.requests += 1;
            regs.fault
        };
        if request_unit != unit && request_unit != 0 && request_unit != 255 {
            continue;
        }
        let response = match fault {
            Fault::Silence => continue,
            Fault::Disconnect => return Ok(()),
            Fault::Exception(code) => exception(&pdu, code),
            Fault::Malformed => {
                let mut r = answer(&bank, &pdu);
                if r.len() > 2 {
                    r[1] = r[1].wrapping_add(2);
                    r.truncate(r.len() - 2);
                }
                r
            }
            Fault::None => answer(&bank, &pdu),
        };
        let mut out = Vec::with_capacity(response.len() + 9);
        match header {
            Some(tx) => {
                out.extend_from_slice(&tx);
                out.extend_from_slice(&[0, 0]);
                let len = u16::try_from(response.len() + 1).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.push(request_unit);
                out.extend_from_slice(&response);
            }
            None => {
                out.push(request_unit);
                out.extend_from_slice(&response);
                let crc = crc16(&out);
                out.extend_from_slice(&crc.to_le_bytes());
            }
        }
        stream.write_all(&out).await?;
    }
}

fn exception(pdu: &[u8], code: u8) -> Vec<u8> {
    vec![pdu.first().copied().unwrap_or(0) | 0x80, code]
}

fn answer(bank: &RegisterBank, pdu: &[u8]) -> Vec<u8> {
    let [function, a0, a1, c0, c1] = pdu[..] else {
        return exception(pdu, ILLEGAL_FUNCTION);
    };
    if function != READ_HOLDING && function != READ_INPUT {
        return exception(pdu, ILLEGAL_FUNCTION);
    }
    let address = u16::from_be_bytes([a0, a1]);
    let count = u16::from_be_bytes([c0, c1]);
    if count == 0 || count > 125 {
        return exception(pdu, ILLEGAL_DATA_VALUE);
    }
    let regs = bank.lock();
    let map = if function == READ_HOLDING {
        &regs.holding
    } else {
        &regs.input
    };
    let Some(values) = read(map, address, count) else {
        return exception(pdu, ILLEGAL_DATA_ADDRESS);
    };
    let mut out = Vec::with_capacity(2 + values.len() * 2);
    out.push(function);
    out.push(u8::try_from(values.len() * 2).unwrap_or(u8::MAX));
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// Modbus RTU CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF), sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_modbus_reference_frame() {
        // Read 2 holding registers at 0 from unit 1: 01 03 00 00 00 02, CRC C4 0B on the wire.
        assert_eq!(crc16(&[1, 3, 0, 0, 0, 2]).to_le_bytes(), [0xC4, 0x0B]);
    }

    #[test]
    fn reads_of_missing_registers_are_illegal_addresses() {
        let bank = RegisterBank::new();
        bank.set_holding(10, &[1, 2, 3]);
        assert_eq!(bank.holding(10, 3), Some(vec![1, 2, 3]));
        assert_eq!(bank.holding(10, 4), None);
        let reply = answer(&bank, &[READ_HOLDING, 0, 9, 0, 2]);
        assert_eq!(reply, vec![READ_HOLDING | 0x80, ILLEGAL_DATA_ADDRESS]);
    }
}
