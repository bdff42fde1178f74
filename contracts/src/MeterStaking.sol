// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable, Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {MeterReading} from "./MeterReading.sol";

/// One local sale as the Settlement contract reports it: energy a seller meter delivered to a
/// buyer meter in one settled slot.
struct Sale {
    bytes32 seller;
    bytes32 buyer;
    uint64 energyWh;
}

/// What the Settlement contract calls to credit settled local sales.
interface ISalesRecorder {
    function creditSales(uint64 deliveredAtMs, Sale[] calldata sales) external;
}

/// @title Attested meters, staking, rewards for delivered energy, fraud proofs
/// @notice A meter earns rewards only for energy a neighbour bought from it and paid for.
/// 1. The owner registers the meter with a registration the meter key signed (P-256) over
///    (chain id, this contract, meter id, owner, nonce), so a registration cannot be copied
///    from the mempool or a key squatted under another id.
/// 2. A community verifier (installer, grid operator) attests the meter: its key, its device
///    identity (SunSpec model 1 manufacturer, model, serial, as in every signed reading), its
///    rated export and import capacity and its grid connection point. Unattested meters may
///    trade; they earn nothing.
/// 3. The Settlement contract credits each settled local sale to the seller meter's epoch, unless
///    buyer and seller share an owner or a grid connection point, or either is unattested.
/// 4. After the epoch, the owner (or its delegate) proves the meter's export with signed
///    readings, contiguous from the last reading it proved. The epoch credits
///    `min(sold, exported, capacity × epoch) × coverage`, where coverage is the share of the
///    epoch spanned by proven readings.
/// 5. Each epoch's emission (halving on a schedule) is split over credited energy, at most
///    `maxRewardPerWh`; whatever is not earned returns to the treasury, never to a later epoch.
/// 6. An epoch's reward vests `unbondingPeriod` after the epoch is final; stake stays bonded
///    until the rewards of the last epoch it earned in vest. A fraud proof (two readings of one
///    key that cannot both be true) slashes stake and unbonding stake, and the meter forfeits
///    every reward it has not claimed. The reporter commits to the evidence first, so a copied
///    report pays nobody but the one who committed.
/// @dev Rewards use a per-epoch accumulator: `rewardPerWh[e]` is set once when epoch `e` is
/// finalized, a meter's reward is `credited * rewardPerWh / 1e18`, O(1) per meter and epoch.
contract MeterStaking is ISalesRecorder, Ownable2Step, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    struct Meter {
        address owner;
        bool active;
        bool attested;
        bool slashed;
        /// Time since which the stake has been at least `minStake` without a break (0: not).
        uint64 bondedSince;
        bytes32 keyX;
        bytes32 keyY;
        uint256 stake;
        uint256 unbonding;
        uint64 unbondingEnds;
        /// One past the last epoch the meter was credited in (0: never).
        uint64 earnedUntil;
        /// The oldest epoch whose reward has not been claimed.
        uint64 nextClaimEpoch;
        uint32 exportCapacityW;
        uint32 importCapacityW;
        /// The last proven reading (timestamp zero: no proof with this key yet).
        uint64 lastSeq;
        uint64 lastExportWh;
        uint64 lastImportWh;
        uint64 lastTimestampMs;
        /// keccak256(manufacturer ‖ model ‖ serial) as the readings encode them.
        bytes32 deviceHash;
        bytes32 gridPoint;
        /// May prove and claim for the owner.
        address delegate;
        /// Key before the last rotation: its readings still count as evidence of fraud.
        bytes32 previousKeyX;
        bytes32 previousKeyY;
    }

    /// One meter's standing in one epoch (one storage slot).
    struct EpochCredit {
        uint64 soldWh;
        uint64 exportedWh;
        uint32 coveredS;
        uint64 creditedWh;
    }

    /// Parameters fixed at deployment.
    struct Config {
        uint256 minStake;
        uint64 unbondingPeriod;
        uint64 genesis;
        uint64 epochDuration;
        uint64 proofWindow;
        uint256 initialEmission;
        uint64 halvingEpochs;
        uint16 slashBps;
        uint16 reporterBps;
        uint256 maxRewardPerWh;
        address treasury;
        address settlement;
    }

    uint256 private constant BPS = 10_000;
    uint256 private constant PRECISION = 1e18;
    bytes32 private constant REGISTER_TAG = bytes32("GRIDSHARE/METER-REGISTRATION");
    bytes32 private constant ROTATE_TAG = bytes32("GRIDSHARE/METER-KEY-ROTATION");
    uint8 private constant CLOCK_SYNCHRONISED = 2;

    /// The network token: staked, slashed and paid as rewards.
    IERC20 public immutable token;
    /// Stake a meter needs, bonded since before the epoch starts, to earn in the epoch.
    uint256 public immutable minStake;
    /// Seconds between an unstake request and the withdrawal; also the vesting delay.
    uint64 public immutable unbondingPeriod;
    /// Unix time (seconds) at which epoch 0 starts.
    uint64 public immutable genesis;
    /// Length of an epoch in seconds.
    uint64 public immutable epochDuration;
    /// Seconds after an epoch ends during which its energy can be proven.
    uint64 public immutable proofWindow;
    /// Tokens emitted in epoch 0.
    uint256 public immutable initialEmission;
    /// Epochs between halvings of the emission.
    uint64 public immutable halvingEpochs;
    /// Part of a meter's stake taken by a fraud proof, in basis points.
    uint16 public immutable slashBps;
    /// Part of the slashed amount paid to the reporter, in basis points; the rest goes to the
    /// treasury.
    uint16 public immutable reporterBps;
    /// Ceiling of the reward per credited Wh, in token units: above it an epoch's emission goes
    /// back to the treasury, so farming energy costs more in fees than it earns.
    uint256 public immutable maxRewardPerWh;
    /// Receives emission nobody earned, the slashed stake and forfeited rewards.
    address public immutable treasury;
    /// The Settlement contract, the only source of sales credits.
    address public immutable settlement;

    /// Addresses allowed to attest meters.
    mapping(address account => bool) public isVerifier;
    mapping(bytes32 meterId => Meter) private _meters;
    /// Meter a key (keccak256(x, y)) was registered for; a key serves one meter, ever.
    mapping(bytes32 keyHash => bytes32 meterId) public meterOfKey;
    /// Registrations and key rotations of a meter id so far; signed into the next one.
    mapping(bytes32 meterId => uint64) public registrationNonce;
    mapping(bytes32 meterId => mapping(uint64 epoch => EpochCredit)) private _credits;
    /// Block in which a fraud commitment was first made.
    mapping(bytes32 commitment => uint256) public fraudCommitBlock;

    /// Sum of active stakes.
    uint256 public totalStaked;
    /// Sum of stakes waiting out their unbonding period.
    uint256 public totalUnbonding;
    /// Tokens paid in for rewards.
    uint256 public rewardsFunded;
    /// Tokens assigned to finalized epochs.
    uint256 public rewardsAllocated;
    /// Emission of finalized epochs that nobody earned, returned to the treasury.
    uint256 public rewardsReturned;
    /// Allocated rewards of slashed meters, returned to the treasury.
    uint256 public rewardsForfeited;
    /// Tokens paid out as rewards.
    uint256 public rewardsPaid;
    /// The oldest epoch not yet finalized.
    uint64 public nextEpochToFinalize;
    /// Credited Wh of all meters in an epoch.
    mapping(uint64 epoch => uint256) public sharesWh;
    /// Reward per credited Wh of an epoch, scaled by 1e18; set when the epoch is finalized.
    mapping(uint64 epoch => uint256) public rewardPerWh;

    /// A deployment parameter is out of range; `name` says which.
    error InvalidParameter(string name);
    /// The meter id is zero or registered.
    error MeterExists(bytes32 meterId);
    /// No meter is registered under this id.
    error UnknownMeter(bytes32 meterId);
    /// The key is zero or already registered for a meter.
    error KeyInUse(bytes32 keyHash);
    /// Only the meter's owner (or, where said, its delegate) may do this.
    error NotMeterOwner(bytes32 meterId, address caller);
    /// Only a verifier may attest.
    error NotVerifier(address caller);
    /// Only the Settlement contract credits sales.
    error NotSettlement(address caller);
    /// The attestation names a key other than the registered one.
    error AttestedKeyMismatch(bytes32 meterId);
    /// The meter was slashed for fraud.
    error MeterSlashed(bytes32 meterId);
    /// The meter is deregistered.
    error MeterInactive(bytes32 meterId);
    /// The meter has no attestation.
    error NotAttested(bytes32 meterId);
    /// A zero amount.
    error ZeroAmount();
    /// More than the meter's active stake.
    error InsufficientStake(bytes32 meterId, uint256 stake, uint256 amount);
    /// The unbonding period has not ended, or nothing is unbonding.
    error NotUnbonded(bytes32 meterId, uint64 unbondingEnds);
    /// The meter still holds stake.
    error StillStaked(bytes32 meterId);
    /// A reading is of another meter than the one named.
    error MeterMismatch(bytes32 expected, bytes32 actual);
    /// A signature does not verify against the meter key.
    error BadSignature(bytes32 meterId, uint64 seq);
    /// The reading's device identity is not the attested one.
    error DeviceMismatch(bytes32 meterId, uint64 seq);
    /// The reading's clock is not synchronised, so its epoch cannot be trusted.
    error ClockNotSynchronised(uint64 seq);
    /// The stake was below the minimum at some time since the epoch began.
    error NotBondedForEpoch(bytes32 meterId, uint64 epoch);
    /// A proof must start at the last proven reading and move forward.
    error NotContiguous(bytes32 meterId, uint64 seq);
    /// The last reading's epoch has not ended, its proof window has closed, or it is final.
    error EpochNotProvable(uint64 epoch);
    /// An energy counter needed for the proof does not carry a good value.
    error CounterNotOk(uint64 seq);
    /// Counters go backwards: submit it as a fraud proof instead.
    error CountersWentBackwards(uint64 seq);
    /// The epoch is not final, or its reward has not vested yet.
    error NotVested(uint64 epoch);
    /// The reveal has no commitment from an earlier block by this reporter.
    error NoCommitment(address reporter);
    /// The two readings do not contradict each other.
    error NotFraud();

    event VerifierSet(address indexed verifier, bool allowed);
    event MeterRegistered(bytes32 indexed meterId, address indexed owner, bytes32 keyX, bytes32 keyY);
    event MeterAttested(
        bytes32 indexed meterId,
        address indexed verifier,
        bytes32 deviceHash,
        uint32 exportCapacityW,
        uint32 importCapacityW,
        bytes32 gridPoint
    );
    event AttestationRevoked(bytes32 indexed meterId, address indexed verifier);
    event KeyRotated(bytes32 indexed meterId, bytes32 keyX, bytes32 keyY);
    event MeterDeregistered(bytes32 indexed meterId);
    event DelegateSet(bytes32 indexed meterId, address delegate);
    event Staked(bytes32 indexed meterId, address indexed owner, uint256 amount);
    event UnstakeRequested(bytes32 indexed meterId, uint256 amount, uint64 unbondingEnds);
    event Unstaked(bytes32 indexed meterId, address indexed owner, uint256 amount);
    event RewardsFunded(address indexed from, uint256 amount);
    event SalesCredited(uint64 indexed epoch, uint256 creditedWh, uint256 refusedWh);
    event EnergyProven(bytes32 indexed meterId, uint64 indexed epoch, uint64 exportedWh, uint64 creditedWh);
    event EpochFinalized(uint64 indexed epoch, uint256 sharesWh, uint256 rewardPerWh, uint256 allocated, uint256 returned);
    event RewardClaimed(bytes32 indexed meterId, address indexed owner, uint64 throughEpoch, uint256 amount);
    event RewardsForfeited(bytes32 indexed meterId, uint64 throughEpoch, uint256 amount);
    event FraudCommitted(bytes32 indexed commitment, address indexed reporter);
    event Slashed(bytes32 indexed meterId, address indexed reporter, uint256 amount, uint256 reporterReward);

    constructor(IERC20 token_, address owner_, Config memory c) Ownable(owner_) {
        if (address(token_) == address(0)) revert InvalidParameter("token");
        if (c.minStake == 0) revert InvalidParameter("minStake");
        if (c.unbondingPeriod == 0) revert InvalidParameter("unbondingPeriod");
        if (c.epochDuration == 0 || c.epochDuration > type(uint32).max) revert InvalidParameter("epochDuration");
        if (c.proofWindow == 0) revert InvalidParameter("proofWindow");
        if (c.halvingEpochs == 0) revert InvalidParameter("halvingEpochs");
        if (c.slashBps == 0 || c.slashBps > BPS) revert InvalidParameter("slashBps");
        if (c.reporterBps > BPS) revert InvalidParameter("reporterBps");
        if (c.maxRewardPerWh == 0) revert InvalidParameter("maxRewardPerWh");
        if (c.treasury == address(0)) revert InvalidParameter("treasury");
        if (c.settlement == address(0)) revert InvalidParameter("settlement");
        token = token_;
        minStake = c.minStake;
        unbondingPeriod = c.unbondingPeriod;
        genesis = c.genesis;
        epochDuration = c.epochDuration;
        proofWindow = c.proofWindow;
        initialEmission = c.initialEmission;
        halvingEpochs = c.halvingEpochs;
        slashBps = c.slashBps;
        reporterBps = c.reporterBps;
        maxRewardPerWh = c.maxRewardPerWh;
        treasury = c.treasury;
        settlement = c.settlement;
    }

    // ------------------------------------------------------------------ registry

    /// Allows or disallows `verifier` to attest meters (installer or grid operator role).
    function setVerifier(address verifier, bool allowed) external onlyOwner {
        isVerifier[verifier] = allowed;
        emit VerifierSet(verifier, allowed);
    }

    /// The statement a meter key signs (P-256 over its SHA-256) to register the meter for
    /// `owner`, or (with `rotation`) to become the meter's new key.
    function registrationMessage(bytes32 meterId, address owner_, bool rotation) public view returns (bytes memory) {
        return abi.encodePacked(
            rotation ? ROTATE_TAG : REGISTER_TAG,
            block.chainid,
            address(this),
            meterId,
            owner_,
            registrationNonce[meterId]
        );
    }

    /// Registers `meterId` with its P-256 key for the caller; `signature` is the key's over
    /// `registrationMessage(meterId, caller, false)`.
    function registerMeter(bytes32 meterId, bytes32 keyX, bytes32 keyY, bytes calldata signature) external {
        Meter storage m = _meters[meterId];
        if (meterId == bytes32(0) || m.owner != address(0)) revert MeterExists(meterId);
        _claimKey(meterId, keyX, keyY, signature, false);
        m.owner = msg.sender;
        m.active = true;
        m.keyX = keyX;
        m.keyY = keyY;
        m.nextClaimEpoch = _currentEpoch();
        emit MeterRegistered(meterId, msg.sender, keyX, keyY);
    }

    /// Replaces the meter's key (a new device or a lost key). The new key signs
    /// `registrationMessage(meterId, owner, true)`. The attestation is cleared: a verifier must
    /// attest the new key. Readings of the old key still count as evidence of fraud.
    function rotateKey(bytes32 meterId, bytes32 keyX, bytes32 keyY, bytes calldata signature) external {
        Meter storage m = _ownedMeter(meterId);
        if (m.slashed) revert MeterSlashed(meterId);
        _claimKey(meterId, keyX, keyY, signature, true);
        m.previousKeyX = m.keyX;
        m.previousKeyY = m.keyY;
        m.keyX = keyX;
        m.keyY = keyY;
        m.attested = false;
        m.lastTimestampMs = 0;
        emit KeyRotated(meterId, keyX, keyY);
    }

    /// Attests a registered meter after inspecting it: its key, device identity, rated
    /// capacities and grid connection point.
    function attest(
        bytes32 meterId,
        bytes32 keyX,
        bytes32 keyY,
        bytes32 deviceHash,
        uint32 exportCapacityW,
        uint32 importCapacityW,
        bytes32 gridPoint
    ) external {
        if (!isVerifier[msg.sender]) revert NotVerifier(msg.sender);
        Meter storage m = _meters[meterId];
        if (m.owner == address(0)) revert UnknownMeter(meterId);
        if (!m.active) revert MeterInactive(meterId);
        if (m.slashed) revert MeterSlashed(meterId);
        if (m.keyX != keyX || m.keyY != keyY) revert AttestedKeyMismatch(meterId);
        if (deviceHash == bytes32(0) || gridPoint == bytes32(0) || exportCapacityW == 0) {
            revert InvalidParameter("attestation");
        }
        m.attested = true;
        m.deviceHash = deviceHash;
        m.exportCapacityW = exportCapacityW;
        m.importCapacityW = importCapacityW;
        m.gridPoint = gridPoint;
        emit MeterAttested(meterId, msg.sender, deviceHash, exportCapacityW, importCapacityW, gridPoint);
    }

    /// Withdraws a meter's attestation (the device was removed or tampered with).
    function revokeAttestation(bytes32 meterId) external {
        if (!isVerifier[msg.sender]) revert NotVerifier(msg.sender);
        Meter storage m = _meters[meterId];
        if (m.owner == address(0)) revert UnknownMeter(meterId);
        m.attested = false;
        emit AttestationRevoked(meterId, msg.sender);
    }

    /// Lets `delegate` (e.g. the market engine) prove and claim for the owner; zero revokes.
    function setDelegate(bytes32 meterId, address delegate) external {
        _ownedMeter(meterId).delegate = delegate;
        emit DelegateSet(meterId, delegate);
    }

    /// Retires the meter: all stake starts unbonding, it earns nothing more. Once everything is
    /// withdrawn the id can be registered again (with a new signed registration).
    function deregisterMeter(bytes32 meterId) external {
        Meter storage m = _ownedMeter(meterId);
        if (!m.active) revert MeterInactive(meterId);
        m.active = false;
        m.attested = false;
        if (m.stake != 0) _unbond(meterId, m, m.stake);
        emit MeterDeregistered(meterId);
    }

    // ------------------------------------------------------------------ staking

    /// Adds `amount` tokens to the meter's stake.
    function stake(bytes32 meterId, uint256 amount) public nonReentrant {
        Meter storage m = _ownedMeter(meterId);
        if (m.slashed) revert MeterSlashed(meterId);
        if (!m.active) revert MeterInactive(meterId);
        if (amount == 0) revert ZeroAmount();
        uint256 received = _pull(amount);
        m.stake += received;
        totalStaked += received;
        if (m.bondedSince == 0 && m.stake >= minStake) m.bondedSince = uint64(block.timestamp);
        emit Staked(meterId, msg.sender, received);
    }

    /// Approves with an EIP-2612 permit and stakes in one transaction. A permit that fails
    /// (e.g. someone already submitted it) is ignored: the allowance decides.
    function stakeWithPermit(bytes32 meterId, uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
    {
        try IERC20Permit(address(token)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        stake(meterId, amount);
    }

    /// Moves `amount` of active stake into unbonding; it stays slashable until withdrawn, and
    /// cannot be withdrawn before the rewards of the last epoch the meter earned in vest.
    /// @dev A new request restarts the clock for everything unbonding.
    function requestUnstake(bytes32 meterId, uint256 amount) external {
        Meter storage m = _ownedMeter(meterId);
        if (amount == 0) revert ZeroAmount();
        if (amount > m.stake) revert InsufficientStake(meterId, m.stake, amount);
        _unbond(meterId, m, amount);
    }

    /// Pays the meter's owner everything whose unbonding period has ended.
    function withdrawUnbonded(bytes32 meterId) external nonReentrant {
        Meter storage m = _ownedMeter(meterId);
        uint256 amount = m.unbonding;
        if (amount == 0 || block.timestamp < m.unbondingEnds) revert NotUnbonded(meterId, m.unbondingEnds);
        m.unbonding = 0;
        totalUnbonding -= amount;
        if (!m.active && m.stake == 0) _release(meterId, m);
        emit Unstaked(meterId, msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// Whether the meter may sell energy: registered, active, not slashed, staked at least
    /// `minStake`.
    function canSell(bytes32 meterId) external view returns (bool) {
        Meter storage m = _meters[meterId];
        return m.active && !m.slashed && m.stake >= minStake;
    }

    /// Everything known about a meter.
    function meter(bytes32 meterId) external view returns (Meter memory) {
        return _meters[meterId];
    }

    /// A meter's standing in an epoch.
    function credit(bytes32 meterId, uint64 epoch) external view returns (EpochCredit memory) {
        return _credits[meterId][epoch];
    }

    // ------------------------------------------------------------------ readings and epochs

    /// Whether `signature` by the P-256 key (x, y) signs the encoded reading.
    function verifyReading(bytes calldata encoded, bytes calldata signature, bytes32 keyX, bytes32 keyY)
        external
        view
        returns (bool)
    {
        MeterReading.parse(encoded);
        return MeterReading.verify(encoded, signature, keyX, keyY);
    }

    /// Epoch of a reading timestamp (milliseconds since the Unix epoch); reverts before genesis.
    function epochOf(uint64 timestampMs) public view returns (uint64) {
        uint64 secs = timestampMs / 1000;
        if (secs < genesis) revert EpochNotProvable(0);
        return (secs - genesis) / epochDuration;
    }

    /// Tokens emitted in `epoch`.
    function emission(uint64 epoch) public view returns (uint256) {
        uint256 halvings = epoch / halvingEpochs;
        return halvings >= 256 ? 0 : initialEmission >> halvings;
    }

    /// When `epoch`'s reward vests: `unbondingPeriod` after its proof window closes.
    function vestsAt(uint64 epoch) public view returns (uint256) {
        return _finalAt(epoch) + unbondingPeriod;
    }

    // ------------------------------------------------------------------ sales and proofs

    /// Credits settled local sales delivered at `deliveredAtMs` (the slot's start). Called by
    /// the Settlement contract in the same transaction as the slot's batch. A sale earns only
    /// between attested meters of different owners at different grid connection points;
    /// others are counted as refused, never reverted, so settlement never fails for rewards.
    function creditSales(uint64 deliveredAtMs, Sale[] calldata sales) external {
        if (msg.sender != settlement) revert NotSettlement(msg.sender);
        uint256 secs = deliveredAtMs / 1000;
        if (secs < genesis) return;
        uint64 epoch = uint64((secs - genesis) / epochDuration);
        if (epoch < nextEpochToFinalize) return;
        uint256 credited;
        uint256 refused;
        for (uint256 i; i < sales.length; ++i) {
            Sale calldata s = sales[i];
            if (_earnsFromSale(s.seller, s.buyer)) {
                EpochCredit storage c = _credits[s.seller][epoch];
                c.soldWh += s.energyWh;
                _recredit(s.seller, epoch, c);
                credited += s.energyWh;
            } else {
                refused += s.energyWh;
            }
        }
        emit SalesCredited(epoch, credited, refused);
    }

    /// Proves a meter's export up to `last`, starting at the last reading it proved (the
    /// contract keeps its sequence number, time and counters). Only the first proof of a key
    /// names its starting reading (`first`, signed); later proofs leave `first` empty. The epoch of
    /// `last` is credited; both readings must carry a synchronised clock and the attested device.
    /// Only the owner or its delegate may prove, after the epoch and within its proof window.
    function proveEpoch(
        bytes32 meterId,
        bytes calldata first,
        bytes calldata firstSig,
        bytes calldata last,
        bytes calldata lastSig
    ) external returns (uint64 creditedWh) {
        Meter storage m = _operatedMeter(meterId);
        if (m.slashed) revert MeterSlashed(meterId);
        if (!m.active) revert MeterInactive(meterId);
        if (!m.attested) revert NotAttested(meterId);
        MeterReading.Reading memory a = _startReading(meterId, m, first, firstSig);
        MeterReading.Reading memory b = _endReading(meterId, m, last, lastSig);
        if (b.seq <= a.seq || b.timestampMs < a.timestampMs) revert NotContiguous(meterId, b.seq);
        if (b.exportWh < a.exportWh || b.importWh < a.importWh) revert CountersWentBackwards(b.seq);
        creditedWh = _creditProof(meterId, m, a, b);
    }

    /// The reading a proof starts at: the last proven one, or the signed `first` for the first
    /// proof of a key.
    function _startReading(bytes32 meterId, Meter storage m, bytes calldata first, bytes calldata firstSig)
        private
        view
        returns (MeterReading.Reading memory a)
    {
        if (m.lastTimestampMs == 0) {
            a = _checkedReading(meterId, m, first);
            if (!MeterReading.verify(first, firstSig, m.keyX, m.keyY)) revert BadSignature(meterId, a.seq);
            return a;
        }
        if (first.length != 0) revert NotContiguous(meterId, m.lastSeq);
        a.seq = m.lastSeq;
        a.timestampMs = m.lastTimestampMs;
        a.exportWh = m.lastExportWh;
        a.importWh = m.lastImportWh;
    }

    function _endReading(bytes32 meterId, Meter storage m, bytes calldata last, bytes calldata lastSig)
        private
        view
        returns (MeterReading.Reading memory b)
    {
        b = _checkedReading(meterId, m, last);
        if (!MeterReading.verify(last, lastSig, m.keyX, m.keyY)) revert BadSignature(meterId, b.seq);
    }

    function _creditProof(bytes32 meterId, Meter storage m, MeterReading.Reading memory a, MeterReading.Reading memory b)
        private
        returns (uint64 creditedWh)
    {
        uint64 epoch = epochOf(b.timestampMs);
        uint256 start = uint256(genesis) + uint256(epoch) * epochDuration;
        if (block.timestamp < start + epochDuration || block.timestamp >= _finalAt(epoch) || epoch < nextEpochToFinalize)
        {
            revert EpochNotProvable(epoch);
        }
        if (m.bondedSince == 0 || m.bondedSince > start || m.stake < minStake) revert NotBondedForEpoch(meterId, epoch);

        EpochCredit storage c = _credits[meterId][epoch];
        uint256 fromMs = a.timestampMs > start * 1000 ? a.timestampMs : start * 1000;
        c.coveredS += uint32((b.timestampMs - fromMs) / 1000);
        uint64 exported = b.exportWh - a.exportWh;
        c.exportedWh += exported;
        creditedWh = _recredit(meterId, epoch, c);

        m.lastSeq = b.seq;
        m.lastExportWh = b.exportWh;
        m.lastImportWh = b.importWh;
        m.lastTimestampMs = b.timestampMs;
        if (m.earnedUntil <= epoch) m.earnedUntil = epoch + 1;
        emit EnergyProven(meterId, epoch, exported, creditedWh);
    }

    // ------------------------------------------------------------------ rewards

    /// Adds `amount` tokens to the reward pool.
    function fundRewards(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        uint256 received = _pull(amount);
        rewardsFunded += received;
        emit RewardsFunded(msg.sender, received);
    }

    /// Finalizes every epoch before `upTo` whose proof window has closed, in order. An
    /// epoch's emission (as far as funded) is split over its credited Wh, at most
    /// `maxRewardPerWh` each; the rest goes back to the treasury.
    function finalizeEpochs(uint64 upTo) public {
        uint64 e = nextEpochToFinalize;
        uint256 toTreasury;
        while (e < upTo && block.timestamp >= _finalAt(e)) {
            uint256 available = rewardsFunded - rewardsAllocated - rewardsReturned - toTreasury;
            uint256 budget = emission(e);
            if (budget > available) budget = available;
            uint256 shares = sharesWh[e];
            uint256 perWh;
            uint256 allocated;
            if (shares != 0) {
                perWh = _perWh(budget, shares);
                allocated = perWh * shares / PRECISION;
                rewardPerWh[e] = perWh;
                rewardsAllocated += allocated;
            }
            toTreasury += budget - allocated;
            emit EpochFinalized(e, shares, perWh, allocated, budget - allocated);
            ++e;
        }
        nextEpochToFinalize = e;
        if (toTreasury != 0) {
            rewardsReturned += toTreasury;
            token.safeTransfer(treasury, toTreasury);
        }
    }

    /// Reward of `meterId` in `epoch` (zero until the epoch is finalized).
    function rewardOf(bytes32 meterId, uint64 epoch) public view returns (uint256) {
        if (epoch >= nextEpochToFinalize) return 0;
        return uint256(_credits[meterId][epoch].creditedWh) * rewardPerWh[epoch] / PRECISION;
    }

    /// What the owner could claim now through `throughEpoch` (zero for a slashed meter),
    /// counting vested epochs that the claim itself would finalize first.
    function claimable(bytes32 meterId, uint64 throughEpoch) external view returns (uint256 amount) {
        Meter storage m = _meters[meterId];
        if (m.slashed) return 0;
        uint64 end = _vestedEnd(throughEpoch);
        uint64 e = m.nextClaimEpoch;
        for (; e < end && e < nextEpochToFinalize; ++e) {
            amount += rewardOf(meterId, e);
        }
        uint256 available = rewardsFunded - rewardsAllocated - rewardsReturned;
        for (uint64 f = nextEpochToFinalize; f < end; ++f) {
            uint256 budget = emission(f);
            if (budget > available) budget = available;
            available -= budget;
            uint256 shares = sharesWh[f];
            if (f >= e && shares != 0) {
                amount += uint256(_credits[meterId][f].creditedWh) * _perWh(budget, shares) / PRECISION;
            }
        }
    }

    /// Pays the meter's owner its vested rewards from the oldest unclaimed epoch through
    /// `throughEpoch` (capped at the last vested one), finalizing them first. Owner or
    /// delegate only.
    function claimRewards(bytes32 meterId, uint64 throughEpoch) external nonReentrant returns (uint256 amount) {
        Meter storage m = _operatedMeter(meterId);
        if (m.slashed) revert MeterSlashed(meterId);
        uint64 end = _vestedEnd(throughEpoch);
        if (end <= m.nextClaimEpoch) revert NotVested(throughEpoch);
        if (end > nextEpochToFinalize) finalizeEpochs(end);
        for (uint64 e = m.nextClaimEpoch; e < end; ++e) {
            amount += rewardOf(meterId, e);
        }
        m.nextClaimEpoch = end;
        rewardsPaid += amount;
        address owner_ = m.owner;
        emit RewardClaimed(meterId, owner_, end - 1, amount);
        if (amount != 0) token.safeTransfer(owner_, amount);
    }

    /// Returns the unclaimed rewards of a slashed meter through `throughEpoch` to the treasury.
    /// Anyone may call.
    function forfeitRewards(bytes32 meterId, uint64 throughEpoch) external nonReentrant returns (uint256 amount) {
        Meter storage m = _meters[meterId];
        if (!m.slashed) revert NotFraud();
        if (throughEpoch >= nextEpochToFinalize) finalizeEpochs(throughEpoch + 1);
        uint64 end = throughEpoch < nextEpochToFinalize ? throughEpoch + 1 : nextEpochToFinalize;
        for (uint64 e = m.nextClaimEpoch; e < end; ++e) {
            amount += rewardOf(meterId, e);
        }
        if (end > m.nextClaimEpoch) m.nextClaimEpoch = end;
        rewardsForfeited += amount;
        emit RewardsForfeited(meterId, end, amount);
        if (amount != 0) token.safeTransfer(treasury, amount);
    }

    // ------------------------------------------------------------------ fraud proofs

    /// First half of a fraud report: `commitment = keccak256(abi.encode(reporter,
    /// keccak256(first), keccak256(second)))`. Revealed with `proveFraud` in a later block, so
    /// whoever copies the reveal from the mempool has no commitment of its own.
    function commitFraud(bytes32 commitment) external {
        if (fraudCommitBlock[commitment] == 0) fraudCommitBlock[commitment] = block.number;
        emit FraudCommitted(commitment, msg.sender);
    }

    /// Slashes a meter whose key signed two readings that cannot both be true, on the
    /// evidence the caller committed to earlier. In time order (both clocks synchronised),
    /// a lifetime counter went down; or at one instant (or one sequence number and one time)
    /// the counters differ. One sequence number reused with counters that are consistent in
    /// time (an agent that lost its state) is not fraud. The reporter gets `reporterBps` of
    /// the slashed stake, the treasury the rest; the meter forfeits its unclaimed rewards.
    function proveFraud(bytes calldata first, bytes calldata firstSig, bytes calldata second, bytes calldata secondSig)
        external
        nonReentrant
        returns (uint256 slashed)
    {
        uint256 committed = fraudCommitBlock[keccak256(abi.encode(msg.sender, keccak256(first), keccak256(second)))];
        if (committed == 0 || committed >= block.number) revert NoCommitment(msg.sender);
        MeterReading.Reading memory a = MeterReading.parse(first);
        MeterReading.Reading memory b = MeterReading.parse(second);
        if (a.meterId != b.meterId) revert MeterMismatch(a.meterId, b.meterId);
        Meter storage m = _meters[a.meterId];
        if (m.owner == address(0)) revert UnknownMeter(a.meterId);
        if (m.slashed) revert MeterSlashed(a.meterId);
        if (!_signedByMeter(m, first, firstSig) || !_signedByMeter(m, second, secondSig)) {
            revert BadSignature(a.meterId, a.seq);
        }
        if (!_contradict(a, b)) revert NotFraud();

        m.slashed = true;
        m.attested = false;
        m.bondedSince = 0;
        uint256 fromStake = m.stake * slashBps / BPS;
        uint256 fromUnbonding = m.unbonding * slashBps / BPS;
        m.stake -= fromStake;
        m.unbonding -= fromUnbonding;
        totalStaked -= fromStake;
        totalUnbonding -= fromUnbonding;
        slashed = fromStake + fromUnbonding;
        uint256 reward = slashed * reporterBps / BPS;
        emit Slashed(a.meterId, msg.sender, slashed, reward);
        if (reward != 0) token.safeTransfer(msg.sender, reward);
        if (slashed != reward) token.safeTransfer(treasury, slashed - reward);
    }

    // ------------------------------------------------------------------ internals

    function _claimKey(bytes32 meterId, bytes32 keyX, bytes32 keyY, bytes calldata signature, bool rotation) private {
        bytes32 keyHash = keccak256(abi.encode(keyX, keyY));
        if (keyX == bytes32(0) || meterOfKey[keyHash] != bytes32(0)) revert KeyInUse(keyHash);
        bytes32 digest = sha256(registrationMessage(meterId, msg.sender, rotation));
        if (!MeterReading.verifyDigest(digest, signature, keyX, keyY)) revert BadSignature(meterId, 0);
        meterOfKey[keyHash] = meterId;
        ++registrationNonce[meterId];
    }

    function _unbond(bytes32 meterId, Meter storage m, uint256 amount) private {
        m.stake -= amount;
        totalStaked -= amount;
        m.unbonding += amount;
        totalUnbonding += amount;
        if (m.stake < minStake) m.bondedSince = 0;
        uint256 ends = block.timestamp + unbondingPeriod;
        if (m.earnedUntil != 0) {
            uint256 vests = vestsAt(m.earnedUntil - 1);
            if (vests > ends) ends = vests;
        }
        m.unbondingEnds = uint64(ends);
        emit UnstakeRequested(meterId, amount, uint64(ends));
    }

    /// Frees a retired meter's id for a new registration; its keys stay used forever.
    function _release(bytes32 meterId, Meter storage m) private {
        if (m.slashed) return;
        delete _meters[meterId];
    }

    function _earnsFromSale(bytes32 seller, bytes32 buyer) private view returns (bool) {
        Meter storage s = _meters[seller];
        Meter storage b = _meters[buyer];
        return s.attested && b.attested && s.owner != b.owner && s.gridPoint != b.gridPoint;
    }

    /// Recomputes an epoch credit: min(sold, exported, capacity × epoch) × coverage.
    function _recredit(bytes32 meterId, uint64 epoch, EpochCredit storage c) private returns (uint64 credited) {
        uint256 wh = c.soldWh < c.exportedWh ? c.soldWh : c.exportedWh;
        uint256 capWh = uint256(_meters[meterId].exportCapacityW) * epochDuration / 3600;
        if (wh > capWh) wh = capWh;
        uint256 covered = c.coveredS < epochDuration ? c.coveredS : epochDuration;
        credited = uint64(wh * covered / epochDuration);
        uint64 previous = c.creditedWh;
        if (credited != previous) {
            c.creditedWh = credited;
            sharesWh[epoch] = sharesWh[epoch] + credited - previous;
        }
    }

    function _checkedReading(bytes32 meterId, Meter storage m, bytes calldata encoded)
        private
        view
        returns (MeterReading.Reading memory r)
    {
        r = MeterReading.parse(encoded);
        if (r.meterId != meterId) revert MeterMismatch(meterId, r.meterId);
        if (r.clock != CLOCK_SYNCHRONISED) revert ClockNotSynchronised(r.seq);
        if (keccak256(encoded[65:161]) != m.deviceHash) revert DeviceMismatch(meterId, r.seq);
        if (r.exportStatus != 0 || r.importStatus != 0) revert CounterNotOk(r.seq);
    }

    function _signedByMeter(Meter storage m, bytes calldata encoded, bytes calldata sig) private view returns (bool) {
        if (MeterReading.verify(encoded, sig, m.keyX, m.keyY)) return true;
        return m.previousKeyX != bytes32(0) && MeterReading.verify(encoded, sig, m.previousKeyX, m.previousKeyY);
    }

    /// Whether two readings of one meter cannot both be true.
    function _contradict(MeterReading.Reading memory a, MeterReading.Reading memory b) private pure returns (bool) {
        if (a.timestampMs == b.timestampMs) return !_sameCounters(a, b);
        if (a.clock != CLOCK_SYNCHRONISED || b.clock != CLOCK_SYNCHRONISED) {
            // Without trusted clocks only the sequence orders them: a counter lower at a higher
            // sequence number. (Such readings can never be proven for rewards.)
            if (a.seq == b.seq) return false;
            return a.seq < b.seq ? _backwards(a, b) : _backwards(b, a);
        }
        return a.timestampMs < b.timestampMs ? _backwards(a, b) : _backwards(b, a);
    }

    function _sameCounters(MeterReading.Reading memory a, MeterReading.Reading memory b) private pure returns (bool) {
        return a.importStatus == b.importStatus && a.importWh == b.importWh && a.exportStatus == b.exportStatus
            && a.exportWh == b.exportWh && a.chargeStatus == b.chargeStatus && a.chargeWh == b.chargeWh
            && a.dischargeStatus == b.dischargeStatus && a.dischargeWh == b.dischargeWh;
    }

    /// Whether any lifetime counter carried by both readings is lower in `later`.
    function _backwards(MeterReading.Reading memory earlier, MeterReading.Reading memory later)
        private
        pure
        returns (bool)
    {
        return _dropped(earlier.importStatus, earlier.importWh, later.importStatus, later.importWh)
            || _dropped(earlier.exportStatus, earlier.exportWh, later.exportStatus, later.exportWh)
            || _dropped(earlier.chargeStatus, earlier.chargeWh, later.chargeStatus, later.chargeWh)
            || _dropped(earlier.dischargeStatus, earlier.dischargeWh, later.dischargeStatus, later.dischargeWh);
    }

    function _dropped(uint8 s1, uint64 v1, uint8 s2, uint64 v2) private pure returns (bool) {
        return MeterReading.carriesValue(s1) && MeterReading.carriesValue(s2) && v2 < v1;
    }

    function _ownedMeter(bytes32 meterId) private view returns (Meter storage m) {
        m = _meters[meterId];
        if (m.owner == address(0)) revert UnknownMeter(meterId);
        if (m.owner != msg.sender) revert NotMeterOwner(meterId, msg.sender);
    }

    function _operatedMeter(bytes32 meterId) private view returns (Meter storage m) {
        m = _meters[meterId];
        if (m.owner == address(0)) revert UnknownMeter(meterId);
        if (m.owner != msg.sender && (m.delegate != msg.sender || msg.sender == address(0))) {
            revert NotMeterOwner(meterId, msg.sender);
        }
    }

    /// One past the last epoch that is vested (so final) and at most `throughEpoch`.
    function _vestedEnd(uint64 throughEpoch) private view returns (uint64 end) {
        // vestsAt(e) <= now  <=>  e + 1 <= (now - genesis - proofWindow - unbondingPeriod) / epochDuration
        uint256 lag = uint256(genesis) + proofWindow + unbondingPeriod;
        uint256 vested = block.timestamp < lag ? 0 : (block.timestamp - lag) / epochDuration;
        end = vested <= throughEpoch ? uint64(vested) : throughEpoch + 1;
    }

    /// An epoch's reward per credited Wh (scaled by 1e18): its budget split over its shares, at
    /// most `maxRewardPerWh`.
    function _perWh(uint256 budget, uint256 shares) private view returns (uint256 perWh) {
        perWh = budget * PRECISION / shares;
        if (perWh > maxRewardPerWh * PRECISION) perWh = maxRewardPerWh * PRECISION;
    }

    function _finalAt(uint64 epoch) private view returns (uint256) {
        return uint256(genesis) + (uint256(epoch) + 1) * epochDuration + proofWindow;
    }

    function _currentEpoch() private view returns (uint64) {
        return block.timestamp < genesis ? 0 : uint64((block.timestamp - genesis) / epochDuration);
    }

    function _pull(uint256 amount) private returns (uint256 received) {
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        received = token.balanceOf(address(this)) - before;
    }
}
