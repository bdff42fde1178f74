// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {MeterReading} from "./MeterReading.sol";

/// @title Meter registry, staking, energy rewards and fraud proofs
/// @notice Operators register a meter's P-256 key, stake the network token on it as
/// collateral, prove each epoch's exported energy with two readings the meter signed, and are
/// paid from a decaying emission in proportion to verified energy. Anyone who holds two
/// contradicting readings signed by one meter key gets the meter slashed and part of its stake.
/// @dev Rewards. Epoch `e` emits `initialEmission >> (e / halvingEpochs)`: early operators are
/// paid more, the subsidy halves on a fixed schedule. After an epoch's proof window closes it is
/// finalized once, in order: `rewardPerWh[e] = budget * 1e18 / sharesWh[e]`, where the budget
/// is the emission plus whatever earlier epochs left unpaid, capped by what was funded. Each
/// owner then claims `shares * rewardPerWh / 1e18` in O(1) (the StakingRewards accumulator,
/// stepped per epoch). Two known pitfalls are handled explicitly: an epoch with no verified
/// energy allocates nothing and carries its whole emission forward, and the truncation
/// remainder of `rewardPerWh` is carried forward too, so only the per-claim rounding (less than
/// one wei per owner and epoch) stays in the contract.
/// Shares are counted per owner as the owner's net export over all its meters (exports minus
/// imports, floored at zero), so energy moved between meters of one owner earns nothing.
contract MeterStaking is ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    struct Meter {
        address owner;
        bool slashed;
        /// Next sequence number a proof may start at (one past the last proven reading).
        uint64 nextSeq;
        uint64 lastExportWh;
        uint64 lastImportWh;
        bytes32 keyX;
        bytes32 keyY;
        uint256 stake;
        uint256 unbonding;
        uint64 unbondingEnds;
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
    }

    uint256 private constant BPS = 10_000;
    uint256 private constant PRECISION = 1e18;

    /// The network token: staked, slashed and paid as rewards.
    IERC20 public immutable token;
    /// Stake a meter needs to sell energy and to earn rewards.
    uint256 public immutable minStake;
    /// Seconds between an unstake request and the withdrawal.
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
    /// Part of the slashed amount paid to the reporter, in basis points; the rest funds rewards.
    uint16 public immutable reporterBps;

    mapping(bytes32 meterId => Meter) public meters;
    /// Meter registered with a key (keccak256(x, y)); a key serves one meter, ever.
    mapping(bytes32 keyHash => bytes32 meterId) public meterOfKey;
    /// Sum of active stakes.
    uint256 public totalStaked;
    /// Sum of stakes waiting out their unbonding period.
    uint256 public totalUnbonding;

    /// Tokens paid in for rewards (funding plus the non-reporter part of slashes).
    uint256 public rewardsFunded;
    /// Tokens assigned to finalized epochs.
    uint256 public rewardsAllocated;
    /// Tokens paid out as rewards.
    uint256 public rewardsPaid;
    /// Emission not yet allocated (epochs without energy, truncation, missing funding).
    uint256 public carriedEmission;
    /// The oldest epoch not yet finalized.
    uint64 public nextEpochToFinalize;
    /// Sum over owners of their positive net export in an epoch, Wh.
    mapping(uint64 epoch => uint256) public sharesWh;
    /// Reward per Wh of an epoch, scaled by 1e18; set when the epoch is finalized.
    mapping(uint64 epoch => uint256) public rewardPerWh;
    /// An owner's net export (exports minus imports over its meters) in an epoch, Wh.
    mapping(address owner => mapping(uint64 epoch => int256)) public ownerNetWh;
    /// Whether an owner has claimed an epoch.
    mapping(address owner => mapping(uint64 epoch => bool)) public claimed;

    /// A parameter is out of range.
    error InvalidConfig();
    /// The meter id is zero or already registered.
    error MeterExists(bytes32 meterId);
    /// No meter is registered under this id.
    error UnknownMeter(bytes32 meterId);
    /// The key is zero or already registered for a meter.
    error KeyInUse(bytes32 keyHash);
    /// Only the meter's owner may do this.
    error NotMeterOwner(bytes32 meterId, address caller);
    /// The meter was slashed for fraud.
    error MeterSlashed(bytes32 meterId);
    /// A zero amount.
    error ZeroAmount();
    /// More than the meter's active stake.
    error InsufficientStake(bytes32 meterId, uint256 stake, uint256 amount);
    /// The unbonding period has not ended, or nothing is unbonding.
    error NotUnbonded(bytes32 meterId, uint64 unbondingEnds);
    /// The two readings are from different meters.
    error MeterMismatch(bytes32 first, bytes32 second);
    /// A signature does not verify against the meter's registered key.
    error BadSignature(bytes32 meterId, uint64 seq);
    /// The meter's stake is below the minimum.
    error StakeBelowMinimum(bytes32 meterId, uint256 stake);
    /// A proof's readings must have increasing sequence numbers, after the last proven one.
    error SequenceNotAfter(uint64 seq, uint64 expectedAtLeast);
    /// Both readings must lie in one epoch, which has ended and whose proof window is open.
    error EpochNotProvable(uint64 epoch);
    /// The readings of a proof lie in different epochs.
    error EpochMismatch(uint64 first, uint64 last);
    /// A reading is older than the genesis of the epoch schedule.
    error BeforeGenesis(uint64 timestampMs);
    /// An energy counter needed for the proof does not carry a good value.
    error CounterNotOk(uint64 seq);
    /// Counters go backwards: submit it as a fraud proof instead.
    error CountersWentBackwards(uint64 seq);
    /// The epoch's proof window is still open.
    error EpochNotOver(uint64 epoch);
    /// The owner has already claimed this epoch.
    error AlreadyClaimed(address owner, uint64 epoch);
    /// The two readings do not contradict each other.
    error NotFraud();

    event MeterRegistered(bytes32 indexed meterId, address indexed owner, bytes32 keyX, bytes32 keyY);
    event Staked(bytes32 indexed meterId, address indexed owner, uint256 amount);
    event UnstakeRequested(bytes32 indexed meterId, uint256 amount, uint64 unbondingEnds);
    event Unstaked(bytes32 indexed meterId, address indexed owner, uint256 amount);
    event RewardsFunded(address indexed from, uint256 amount);
    event EnergyProven(
        bytes32 indexed meterId, address indexed owner, uint64 indexed epoch, uint64 exportWh, uint64 importWh
    );
    event EpochFinalized(uint64 indexed epoch, uint256 sharesWh, uint256 rewardPerWh, uint256 allocated);
    event RewardClaimed(address indexed owner, uint64 indexed epoch, uint256 amount);
    event Slashed(bytes32 indexed meterId, address indexed reporter, uint256 amount, uint256 reporterReward);

    constructor(IERC20 token_, Config memory c) {
        if (
            c.epochDuration == 0 || c.halvingEpochs == 0 || c.slashBps > BPS || c.reporterBps > BPS
                || c.minStake == 0
        ) revert InvalidConfig();
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
    }

    // ------------------------------------------------------------------ registry and staking

    /// Registers a meter under `meterId` (the reading's meter id as bytes32) with its P-256
    /// public key; the caller becomes its owner.
    function registerMeter(bytes32 meterId, bytes32 keyX, bytes32 keyY) external {
        if (meterId == bytes32(0) || meters[meterId].owner != address(0)) revert MeterExists(meterId);
        bytes32 keyHash = keccak256(abi.encode(keyX, keyY));
        if (keyX == bytes32(0) || meterOfKey[keyHash] != bytes32(0)) revert KeyInUse(keyHash);
        meterOfKey[keyHash] = meterId;
        Meter storage m = meters[meterId];
        m.owner = msg.sender;
        m.keyX = keyX;
        m.keyY = keyY;
        emit MeterRegistered(meterId, msg.sender, keyX, keyY);
    }

    /// Adds `amount` tokens to the meter's stake.
    function stake(bytes32 meterId, uint256 amount) public nonReentrant {
        Meter storage m = _ownedMeter(meterId);
        if (m.slashed) revert MeterSlashed(meterId);
        if (amount == 0) revert ZeroAmount();
        uint256 received = _pull(amount);
        m.stake += received;
        totalStaked += received;
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

    /// Moves `amount` of active stake into unbonding; it stays slashable until withdrawn.
    /// @dev A new request restarts the unbonding clock for everything unbonding.
    function requestUnstake(bytes32 meterId, uint256 amount) external {
        Meter storage m = _ownedMeter(meterId);
        if (amount == 0) revert ZeroAmount();
        if (amount > m.stake) revert InsufficientStake(meterId, m.stake, amount);
        m.stake -= amount;
        totalStaked -= amount;
        m.unbonding += amount;
        totalUnbonding += amount;
        uint64 ends = uint64(block.timestamp) + unbondingPeriod;
        m.unbondingEnds = ends;
        emit UnstakeRequested(meterId, amount, ends);
    }

    /// Pays the meter's owner everything whose unbonding period has ended.
    function withdrawUnbonded(bytes32 meterId) external nonReentrant {
        Meter storage m = _ownedMeter(meterId);
        uint256 amount = m.unbonding;
        if (amount == 0 || block.timestamp < m.unbondingEnds) revert NotUnbonded(meterId, m.unbondingEnds);
        m.unbonding = 0;
        totalUnbonding -= amount;
        emit Unstaked(meterId, msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// Whether the meter may sell energy: registered, not slashed, staked at least `minStake`.
    function canSell(bytes32 meterId) external view returns (bool) {
        Meter storage m = meters[meterId];
        return m.owner != address(0) && !m.slashed && m.stake >= minStake;
    }

    // ------------------------------------------------------------------ readings

    /// Whether `signature` by the P-256 key (x, y) signs the encoded reading.
    function verifyReading(bytes calldata encoded, bytes calldata signature, bytes32 keyX, bytes32 keyY)
        external
        view
        returns (bool)
    {
        MeterReading.parse(encoded);
        return MeterReading.verify(encoded, signature, keyX, keyY);
    }

    /// Epoch of a reading timestamp (milliseconds since the Unix epoch).
    function epochOf(uint64 timestampMs) public view returns (uint64) {
        uint64 secs = timestampMs / 1000;
        if (secs < genesis) revert BeforeGenesis(timestampMs);
        return (secs - genesis) / epochDuration;
    }

    /// Tokens emitted in `epoch`, before carried amounts.
    function emission(uint64 epoch) public view returns (uint256) {
        uint256 halvings = epoch / halvingEpochs;
        return halvings >= 256 ? 0 : initialEmission >> halvings;
    }

    // ------------------------------------------------------------------ rewards

    /// Adds `amount` tokens to the reward pool.
    function fundRewards(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        uint256 received = _pull(amount);
        rewardsFunded += received;
        emit RewardsFunded(msg.sender, received);
    }

    /// Proves a meter's energy in one epoch with two readings it signed (the first and last
    /// of the interval). Credits the net export to the meter owner's share of the epoch.
    function proveEnergy(
        bytes calldata first,
        bytes calldata firstSig,
        bytes calldata last,
        bytes calldata lastSig
    ) external {
        MeterReading.Reading memory a = MeterReading.parse(first);
        MeterReading.Reading memory b = MeterReading.parse(last);
        if (a.meterId != b.meterId) revert MeterMismatch(a.meterId, b.meterId);
        Meter storage m = _verifiedPair(a.meterId, first, firstSig, a.seq, last, lastSig, b.seq);
        if (m.slashed) revert MeterSlashed(a.meterId);
        if (m.stake < minStake) revert StakeBelowMinimum(a.meterId, m.stake);
        if (a.seq < m.nextSeq) revert SequenceNotAfter(a.seq, m.nextSeq);
        if (b.seq <= a.seq) revert SequenceNotAfter(b.seq, a.seq + 1);

        uint64 epoch = epochOf(a.timestampMs);
        uint64 lastEpoch = epochOf(b.timestampMs);
        if (epoch != lastEpoch) revert EpochMismatch(epoch, lastEpoch);
        uint256 ends = uint256(genesis) + (uint256(epoch) + 1) * epochDuration;
        if (block.timestamp < ends || block.timestamp >= ends + proofWindow || epoch < nextEpochToFinalize) {
            revert EpochNotProvable(epoch);
        }

        if (a.exportStatus != 0 || b.exportStatus != 0 || a.importStatus != 0 || b.importStatus != 0) {
            revert CounterNotOk(a.exportStatus != 0 || a.importStatus != 0 ? a.seq : b.seq);
        }
        if (a.exportWh < m.lastExportWh || a.importWh < m.lastImportWh) revert CountersWentBackwards(a.seq);
        if (b.exportWh < a.exportWh || b.importWh < a.importWh) revert CountersWentBackwards(b.seq);
        uint64 exported = b.exportWh - a.exportWh;
        uint64 imported = b.importWh - a.importWh;

        m.nextSeq = b.seq + 1;
        m.lastExportWh = b.exportWh;
        m.lastImportWh = b.importWh;

        address owner = m.owner;
        int256 before = ownerNetWh[owner][epoch];
        int256 afterNet = before + int256(uint256(exported)) - int256(uint256(imported));
        ownerNetWh[owner][epoch] = afterNet;
        sharesWh[epoch] = sharesWh[epoch] + _positive(afterNet) - _positive(before);
        emit EnergyProven(a.meterId, owner, epoch, exported, imported);
    }

    /// Finalizes every epoch before `upTo` whose proof window has closed, in order.
    function finalizeEpochs(uint64 upTo) public {
        uint64 e = nextEpochToFinalize;
        while (e < upTo) {
            uint256 windowEnds = uint256(genesis) + (uint256(e) + 1) * epochDuration + proofWindow;
            if (block.timestamp < windowEnds) break;
            uint256 budget = emission(e) + carriedEmission;
            uint256 unallocated = rewardsFunded - rewardsAllocated;
            uint256 spendable = budget < unallocated ? budget : unallocated;
            uint256 shares = sharesWh[e];
            uint256 perWh;
            uint256 allocated;
            if (shares != 0) {
                perWh = spendable * PRECISION / shares;
                allocated = perWh * shares / PRECISION;
            }
            rewardPerWh[e] = perWh;
            rewardsAllocated += allocated;
            carriedEmission = budget - allocated;
            emit EpochFinalized(e, shares, perWh, allocated);
            ++e;
        }
        nextEpochToFinalize = e;
    }

    /// Reward `owner` earned in `epoch` (zero until the epoch is finalized).
    function earned(address owner, uint64 epoch) public view returns (uint256) {
        if (epoch >= nextEpochToFinalize || claimed[owner][epoch]) return 0;
        return _positive(ownerNetWh[owner][epoch]) * rewardPerWh[epoch] / PRECISION;
    }

    /// Pays `owner` its reward for `epoch`, finalizing epochs up to it first. Anyone may call;
    /// the tokens always go to the owner.
    function claimReward(address owner, uint64 epoch) external nonReentrant returns (uint256 amount) {
        if (epoch >= nextEpochToFinalize) finalizeEpochs(epoch + 1);
        if (epoch >= nextEpochToFinalize) revert EpochNotOver(epoch);
        if (claimed[owner][epoch]) revert AlreadyClaimed(owner, epoch);
        amount = _positive(ownerNetWh[owner][epoch]) * rewardPerWh[epoch] / PRECISION;
        claimed[owner][epoch] = true;
        rewardsPaid += amount;
        emit RewardClaimed(owner, epoch, amount);
        if (amount != 0) token.safeTransfer(owner, amount);
    }

    // ------------------------------------------------------------------ fraud proofs

    /// Slashes a meter that signed two contradicting readings: the same sequence number with
    /// different contents, or a lifetime counter lower at a higher sequence number. Pays the
    /// reporter `reporterBps` of the slashed amount; the rest funds rewards. A meter is
    /// slashed once; afterwards it can only withdraw what is left.
    function proveFraud(bytes calldata first, bytes calldata firstSig, bytes calldata second, bytes calldata secondSig)
        external
        nonReentrant
        returns (uint256 slashed)
    {
        MeterReading.Reading memory a = MeterReading.parse(first);
        MeterReading.Reading memory b = MeterReading.parse(second);
        if (a.meterId != b.meterId) revert MeterMismatch(a.meterId, b.meterId);
        Meter storage m = _verifiedPair(a.meterId, first, firstSig, a.seq, second, secondSig, b.seq);
        if (m.slashed) revert MeterSlashed(a.meterId);

        bool fraud;
        if (a.seq == b.seq) {
            fraud = keccak256(first) != keccak256(second);
        } else if (a.seq < b.seq) {
            fraud = _backwards(a, b);
        } else {
            fraud = _backwards(b, a);
        }
        if (!fraud) revert NotFraud();

        m.slashed = true;
        uint256 fromStake = m.stake * slashBps / BPS;
        uint256 fromUnbonding = m.unbonding * slashBps / BPS;
        m.stake -= fromStake;
        m.unbonding -= fromUnbonding;
        totalStaked -= fromStake;
        totalUnbonding -= fromUnbonding;
        slashed = fromStake + fromUnbonding;
        uint256 reward = slashed * reporterBps / BPS;
        rewardsFunded += slashed - reward;
        emit Slashed(a.meterId, msg.sender, slashed, reward);
        if (reward != 0) token.safeTransfer(msg.sender, reward);
    }

    // ------------------------------------------------------------------ internals

    function _ownedMeter(bytes32 meterId) private view returns (Meter storage m) {
        m = meters[meterId];
        if (m.owner == address(0)) revert UnknownMeter(meterId);
        if (m.owner != msg.sender) revert NotMeterOwner(meterId, msg.sender);
    }

    function _verifiedPair(
        bytes32 meterId,
        bytes calldata first,
        bytes calldata firstSig,
        uint64 firstSeq,
        bytes calldata second,
        bytes calldata secondSig,
        uint64 secondSeq
    ) private view returns (Meter storage m) {
        m = meters[meterId];
        if (m.owner == address(0)) revert UnknownMeter(meterId);
        if (!MeterReading.verify(first, firstSig, m.keyX, m.keyY)) revert BadSignature(meterId, firstSeq);
        if (!MeterReading.verify(second, secondSig, m.keyX, m.keyY)) revert BadSignature(meterId, secondSeq);
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

    function _positive(int256 x) private pure returns (uint256) {
        return x > 0 ? uint256(x) : 0;
    }

    function _pull(uint256 amount) private returns (uint256 received) {
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        received = token.balanceOf(address(this)) - before;
    }
}
