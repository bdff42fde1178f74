//! The Modbus link to one device: Modbus TCP, RTU over a serial port, or RTU over TCP.
//!
//! Design: one [`ModbusLink`] is owned by exactly one task (the poller), so there is one master
//! per bus and requests never interleave. Every request runs under a timeout (tokio-modbus
//! has none of its own); after any transport error or timeout the connection is dropped and
//! the next request reconnects, because a half-read reply would otherwise desynchronise the
//! stream (evcc and mbmd do the same). Device exceptions keep the connection: the device
//! answered, it just refused.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_modbus::client::{Client, Context, Reader};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

/// How the agent reaches the device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum TransportKind {
    /// Modbus TCP (MBAP framing), e.g. port 502 or SolarEdge's 1502.
    Tcp,
    /// Modbus RTU on a serial port (RS-485 adapter).
    Rtu,
    /// RTU frames carried over TCP by a serial-to-Ethernet adapter that does not convert the
    /// protocol (e.g. USR-TCP232).
    RtuOverTcp,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (8N1, the common default).
    None,
    /// Even parity (8E1).
    Even,
    /// Odd parity.
    Odd,
}

/// Connection settings of one device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// `tcp`, `rtu` or `rtu-over-tcp`.
    pub transport: TransportKind,
    /// `host:port` for `tcp` and `rtu-over-tcp`.
    pub address: String,
    /// Serial device for `rtu`, e.g. `/dev/ttyUSB0`.
    pub serial_port: String,
    /// Serial speed.
    pub baud_rate: u32,
    /// Serial parity.
    pub parity: Parity,
    /// Serial stop bits (1 or 2).
    pub stop_bits: u8,
    /// Modbus unit (slave) id.
    pub unit_id: u8,
    /// Time allowed for one request and its reply.
    pub timeout_ms: u64,
    /// Pause after connecting before the first request (Huawei dongles need about 1 s).
    pub connect_delay_ms: u64,
    /// Pause before every request (RS-485 meters that need a rest between frames).
    pub request_delay_ms: u64,
    /// Close the connection after each poll, for inverters that accept a single client.
    pub disconnect_after_poll: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            transport: TransportKind::Tcp,
            address: "127.0.0.1:502".into(),
            serial_port: "/dev/ttyUSB0".into(),
            baud_rate: 9600,
            parity: Parity::None,
            stop_bits: 1,
            unit_id: 1,
            timeout_ms: 1000,
            connect_delay_ms: 0,
            request_delay_ms: 0,
            disconnect_after_poll: false,
        }
    }
}

/// Which register table a read addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Holding registers (function code 3) — SunSpec lives here.
    Holding,
    /// Input registers (function code 4) — many meters (Eastron) and Sungrow.
    Input,
}

/// Why a read gave no registers.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Could not open the connection.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// Address or serial port.
        target: String,
        /// What the operating system said.
        reason: String,
    },
    /// No complete reply within the timeout.
    #[error("no reply within {0} ms")]
    Timeout(u64),
    /// The device answered with a Modbus exception (the connection stays up).
    #[error("device answered with exception {0:?}")]
    Exception(ExceptionCode),
    /// The reply was not a valid frame, or the connection broke.
    #[error("transport error: {0}")]
    Transport(String),
    /// The reply had a different number of registers than requested.
    #[error("asked for {expected} registers, got {got}")]
    WrongCount {
        /// Registers requested.
        expected: u16,
        /// Registers received.
        got: usize,
    },
}

impl LinkError {
    /// Whether the device itself answered (an exception): the link is fine, the request was not.
    pub fn is_exception(&self) -> bool {
        matches!(self, Self::Exception(_))
    }
}

/// The single owner of the connection to one device.
pub struct ModbusLink {
    config: LinkConfig,
    ctx: Option<Context>,
}

impl ModbusLink {
    /// A link that connects on first use.
    pub fn new(config: LinkConfig) -> Self {
        Self { config, ctx: None }
    }

    /// The settings.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Addresses the following requests to another unit on the same bus (several meters on
    /// one RS-485 line, or the services of a gateway such as a Victron GX), keeping the
    /// connection: one master, requests in turn.
    pub fn set_unit(&mut self, unit: u8) {
        self.config.unit_id = unit;
        if let Some(ctx) = self.ctx.as_mut() {
            ctx.set_slave(Slave(unit));
        }
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.ctx.is_some()
    }

    async fn connect(&mut self) -> Result<&mut Context, LinkError> {
        if self.ctx.is_none() {
            let c = &self.config;
            let slave = Slave(c.unit_id);
            let timeout = Duration::from_millis(c.timeout_ms);
            let ctx = match c.transport {
                TransportKind::Tcp | TransportKind::RtuOverTcp => {
                    let addr = resolve(&c.address).await?;
                    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                        .await
                        .map_err(|_| LinkError::Connect {
                            target: c.address.clone(),
                            reason: format!("no answer within {} ms", c.timeout_ms),
                        })?
                        .map_err(|e| LinkError::Connect {
                            target: c.address.clone(),
                            reason: e.to_string(),
                        })?;
                    // Readings are small and latency matters more than batching.
                    let _ = stream.set_nodelay(true);
                    if c.transport == TransportKind::Tcp {
                        tokio_modbus::client::tcp::attach_slave(stream, slave)
                    } else {
                        tokio_modbus::client::rtu::attach_slave(stream, slave)
                    }
                }
                TransportKind::Rtu => {
                    let builder = tokio_serial::new(&c.serial_port, c.baud_rate)
                        .parity(match c.parity {
                            Parity::None => tokio_serial::Parity::None,
                            Parity::Even => tokio_serial::Parity::Even,
                            Parity::Odd => tokio_serial::Parity::Odd,
                        })
                        .stop_bits(if c.stop_bits == 2 {
                            tokio_serial::StopBits::Two
                        } else {
                            tokio_serial::StopBits::One
                        })
                        .data_bits(tokio_serial::DataBits::Eight);
                    let port = tokio_serial::SerialStream::open(&builder).map_err(|e| {
                        LinkError::Connect {
                            target: c.serial_port.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    tokio_modbus::client::rtu::attach_slave(port, slave)
                }
            };
            if c.connect_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(c.connect_delay_ms)).await;
            }
            tracing::debug!(target: "modbus", transport = ?c.transport, "connected");
            self.ctx = Some(ctx);
        }
        self.ctx
            .as_mut()
            .ok_or_else(|| LinkError::Transport("not connected".into()))
    }

    /// Reads `count` registers at `address` in ONE request, so values and their scale factors
    /// come from the same instant.
    pub async fn read(
        &mut self,
        table: Table,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, LinkError> {
        let delay = self.config.request_delay_ms;
        let timeout_ms = self.config.timeout_ms;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let ctx = self.connect().await?;
        let request = async {
            match table {
                Table::Holding => ctx.read_holding_registers(address, count).await,
                Table::Input => ctx.read_input_registers(address, count).await,
            }
        };
        let outcome = tokio::time::timeout(Duration::from_millis(timeout_ms), request).await;
        match outcome {
            Err(_) => {
                self.drop_connection();
                Err(LinkError::Timeout(timeout_ms))
            }
            Ok(Err(e)) => {
                self.drop_connection();
                Err(LinkError::Transport(e.to_string()))
            }
            Ok(Ok(Err(code))) => Err(LinkError::Exception(code)),
            Ok(Ok(Ok(regs))) if regs.len() != usize::from(count) => {
                self.drop_connection();
                Err(LinkError::WrongCount {
                    expected: count,
                    got: regs.len(),
                })
            }
            Ok(Ok(Ok(regs))) => Ok(regs),
        }
    }

    /// Closes the connection (after a poll, in disconnect-after-poll mode, or after an error).
    pub async fn disconnect(&mut self) {
        if let Some(mut ctx) = self.ctx.take() {
            let _ = tokio::time::timeout(
                Duration::from_millis(self.config.timeout_ms),
                ctx.disconnect(),
            )
            .await;
        }
    }

    fn drop_connection(&mut self) {
        if self.ctx.take().is_some() {
            tracing::debug!(target: "modbus", "connection dropped after an error");
        }
    }
}

async fn resolve(address: &str) -> Result<SocketAddr, LinkError> {
    let connect_err = |reason: String| LinkError::Connect {
        target: address.to_owned(),
        reason,
    };
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| connect_err(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| connect_err("name has no address".into()))
}
