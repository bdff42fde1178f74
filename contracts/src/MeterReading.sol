// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

/// @title Signed meter reading, encoding versions 1 and 2
/// @notice Parses the fixed 222-byte encoding (version 1) or 241-byte encoding (version 2, with
/// solar and battery power) defined in `core/src/reading/mod.rs` and checks its ECDSA P-256
/// signature with the P256VERIFY precompile (EIP-7951 at 0x100; RIP-7212 on L2s).
/// @dev Layout (big-endian, no gaps): tag 0..32, version 32, meterId 33, manufacturer 65,
/// model 97, serial 129, seq 161 (u64), timestampMs 169 (u64), clockSync 177,
/// import status 178 + Wh 179 (u64), export 187 + 188, battery charge 196 + 197,
/// battery discharge 205 + 206, power 214 + 215 (i32), state of charge 219 + 220 (u16);
/// version 2 appends PV power 222 + 223 (i32), PV energy 227 + 228 (u64) and battery power
/// 236 + 237 (i32), which the contracts do not act on. Every version-1 offset is the same in
/// version 2, so one parser reads the counters of both.
library MeterReading {
    /// Length of an encoded reading of version 1.
    uint256 internal constant ENCODED_LEN = 222;
    /// Length of an encoded reading of version 2 (version 1 and the power flow).
    uint256 internal constant ENCODED_LEN_V2 = 241;
    /// ASCII "GRIDSHARE/METER-READING", right-padded with zero bytes.
    bytes32 internal constant DOMAIN_TAG = bytes32("GRIDSHARE/METER-READING");
    /// The version of a 222-byte encoding.
    uint8 internal constant VERSION = 1;
    /// The version of a 241-byte encoding.
    uint8 internal constant VERSION_2 = 2;
    /// EIP-7951 / RIP-7212 precompile.
    address internal constant P256VERIFY = address(0x100);

    /// Value status "ok"; "implausible" (2) carries the last good value, the others none.
    uint8 internal constant STATUS_OK = 0;
    uint8 internal constant STATUS_IMPLAUSIBLE = 2;

    /// The fields the contracts act on (identity strings and power are not needed on chain).
    struct Reading {
        bytes32 meterId;
        uint64 seq;
        uint64 timestampMs;
        uint8 clock;
        uint8 importStatus;
        uint64 importWh;
        uint8 exportStatus;
        uint64 exportWh;
        uint8 chargeStatus;
        uint64 chargeWh;
        uint8 dischargeStatus;
        uint64 dischargeWh;
    }

    /// The encoding is neither 222 nor 241 bytes long.
    error ReadingWrongLength(uint256 length);
    /// The encoding does not start with the reading domain tag.
    error ReadingBadDomainTag();
    /// The encoding has a version this contract does not read.
    error ReadingUnsupportedVersion(uint8 version);
    /// The signature is not 64 bytes (r || s).
    error SignatureWrongLength(uint256 length);

    /// Parses an encoded reading; reverts on a wrong length, tag, or a version that does not
    /// match the length.
    function parse(bytes calldata encoded) internal pure returns (Reading memory r) {
        uint8 expected;
        if (encoded.length == ENCODED_LEN) expected = VERSION;
        else if (encoded.length == ENCODED_LEN_V2) expected = VERSION_2;
        else revert ReadingWrongLength(encoded.length);
        bytes32 tag;
        uint256 w32;
        uint256 w161;
        uint256 w169;
        uint256 w177;
        uint256 w187;
        uint256 w196;
        uint256 w205;
        assembly ("memory-safe") {
            let p := encoded.offset
            tag := calldataload(p)
            w32 := calldataload(add(p, 32))
            w161 := calldataload(add(p, 161))
            w169 := calldataload(add(p, 169))
            w177 := calldataload(add(p, 177))
            w187 := calldataload(add(p, 187))
            w196 := calldataload(add(p, 196))
            w205 := calldataload(add(p, 205))
        }
        if (tag != DOMAIN_TAG) revert ReadingBadDomainTag();
        uint8 version = uint8(w32 >> 248);
        if (version != expected) revert ReadingUnsupportedVersion(version);
        // The meter id starts one byte after the version: the low 31 bytes of w32 and the
        // first byte of the next word.
        r.meterId = bytes32(calldataWord(encoded, 33));
        r.seq = uint64(w161 >> 192);
        r.timestampMs = uint64(w169 >> 192);
        // w177: clock(1) importStatus(1) importWh(8) ...
        r.clock = uint8(w177 >> 248);
        r.importStatus = uint8(w177 >> 240);
        r.importWh = uint64(w177 >> 176);
        r.exportStatus = uint8(w187 >> 248);
        r.exportWh = uint64(w187 >> 184);
        r.chargeStatus = uint8(w196 >> 248);
        r.chargeWh = uint64(w196 >> 184);
        r.dischargeStatus = uint8(w205 >> 248);
        r.dischargeWh = uint64(w205 >> 184);
    }

    /// Whether `signature` (r || s) by the P-256 key (x, y) signs `encoded`.
    /// @dev The precompile answers 32 bytes ending in 1 on success and nothing on failure; a
    /// chain without it also answers nothing, so a missing precompile rejects every reading
    /// instead of accepting one.
    function verify(bytes calldata encoded, bytes calldata signature, bytes32 x, bytes32 y)
        internal
        view
        returns (bool ok)
    {
        ok = verifyDigest(sha256(encoded), signature, x, y);
    }

    /// Whether `signature` (r || s) by the P-256 key (x, y) signs the message whose SHA-256 is
    /// `digest`.
    function verifyDigest(bytes32 digest, bytes calldata signature, bytes32 x, bytes32 y)
        internal
        view
        returns (bool ok)
    {
        if (signature.length != 64) revert SignatureWrongLength(signature.length);
        bytes32 sr = calldataWord(signature, 0);
        bytes32 ss = calldataWord(signature, 32);
        bytes memory input = abi.encode(digest, sr, ss, x, y);
        (bool success, bytes memory out) = P256VERIFY.staticcall(input);
        ok = success && out.length == 32 && abi.decode(out, (uint256)) == 1;
    }

    /// Whether a counter with this status carries a value (ok, or the last good one).
    function carriesValue(uint8 status) internal pure returns (bool) {
        return status == STATUS_OK || status == STATUS_IMPLAUSIBLE;
    }

    function calldataWord(bytes calldata data, uint256 offset) private pure returns (bytes32 w) {
        assembly ("memory-safe") {
            w := calldataload(add(data.offset, offset))
        }
    }
}
