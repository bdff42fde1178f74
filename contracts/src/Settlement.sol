// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable, Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ISalesRecorder, Sale} from "./MeterStaking.sol";

/// @title Per-slot net settlement of the neighbourhood market
/// @notice Households deposit the payment token and withdraw what is theirs with their own
/// keys. After each delivery slot the market engine's operator key submits one batch: the net
/// change of every account that traded or earned a fee, and the Merkle root of the slot's
/// trades and readings.
///
/// What the operator can do: move money between opened accounts in balanced batches; take from
/// each account at most what that account's allowance leaves in its current period (the account
/// sets it; `defaultAllowance` per `defaultPeriod` until it does); record what an account could
/// not pay as public debt, which is collected only within the same allowance.
/// What the operator cannot do: debit beyond an allowance; credit or debit an address whose key
/// never opened an account (by a transaction or an EIP-712 signature); create or destroy money
/// (batches sum to zero); touch a withdrawal once it is paid out; change its own key or the
/// treasury (the owner proposes, and the change takes effect `governanceDelay` later, which is
/// longer than `withdrawalDelay`, so every household can leave before a new key acts).
/// What the owner can do: propose a new operator, treasury or owner (timelocked, with events),
/// revoke the operator at once (stopping settlement, never moving money), name the sales
/// recorder. The owner can be any address, e.g. a Safe multisig.
///
/// @dev Design: the batch carries net deltas, not trades, so its cost grows with the number of
/// accounts touched (one storage word each, plus the allowance terms of an account that set its
/// own) rather than with the number of trades. Each delta is one packed word: the account in the
/// high 160 bits and a two's-complement int96 amount in the low 96 bits. Accounts must be
/// strictly ascending, so an account appears once and every batch has one canonical encoding.
/// An account's balance, its allowance use and its flags share one storage word; opening the
/// account writes that word, so the first credit of a household that has linked its wallet
/// already costs a warm-up-free update rather than a fresh 20 000-gas storage slot.
contract Settlement is Ownable2Step, ReentrancyGuardTransient, EIP712 {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    /// One account's state, one storage word: a batch reads and writes nothing else of an
    /// account whose allowance change is not pending.
    struct Account {
        /// Available balance, payment-token units.
        uint96 balance;
        /// Taken by batches (and debt collection) in the current allowance window.
        uint80 spent;
        /// Start of the current allowance window (unix seconds).
        uint32 windowStart;
        /// `OPENED`, `INDEBTED`, `HAS_TERMS`, `HAS_NEXT`, and the period's index in `_PERIODS`
        /// (bits 4 and 5).
        uint8 flags;
        /// The account's own allowance is `mantissa × 10^exponent` per period.
        uint32 mantissa;
        uint8 exponent;
    }

    /// Stricter allowance terms waiting out the withdrawal delay.
    struct NextTerms {
        uint80 amount;
        uint32 period;
        uint32 effectiveAt;
    }

    /// A requested withdrawal: paid out from `readyAt` on; due debits are taken from it first.
    struct Withdrawal {
        uint128 amount;
        uint64 readyAt;
    }

    /// Deployment parameters.
    struct Config {
        /// The community treasury: fronts shortfalls and is repaid from collected debt.
        address treasury;
        /// Seconds between a withdrawal request (or a stricter allowance) and its effect.
        uint32 withdrawalDelay;
        /// Seconds between proposing a new operator, treasury or owner and its effect.
        uint32 governanceDelay;
        /// Allowance of an account that never set one, per `defaultPeriod`.
        uint80 defaultAllowance;
        /// Period of the default allowance, seconds.
        uint32 defaultPeriod;
    }

    /// A governance change waiting out `governanceDelay`.
    struct PendingChange {
        address next;
        uint64 readyAt;
    }

    /// Running totals of one batch.
    struct Tally {
        uint256 debits;
        uint256 shortfall;
        uint256 uncovered;
        uint256 cut;
        uint256 fromPending;
        uint256 repaid;
    }

    uint8 private constant OPENED = 1;
    uint8 private constant INDEBTED = 2;
    uint8 private constant HAS_TERMS = 4;
    uint8 private constant HAS_NEXT = 8;
    uint8 private constant PERIOD_SHIFT = 4;
    /// EIP-712 type of the statement by which a key opens its account.
    bytes32 public constant OPEN_ACCOUNT_TYPEHASH = keccak256("OpenAccount(address account)");

    /// The payment token (any ERC-20, e.g. a stablecoin).
    IERC20 public immutable paymentToken;
    /// Seconds a withdrawal request (or a stricter allowance) waits.
    uint32 public immutable withdrawalDelay;
    /// Seconds a proposed operator, treasury or owner waits.
    uint32 public immutable governanceDelay;
    /// Allowance of an account that never set one.
    uint80 public immutable defaultAllowance;
    /// Period of the default allowance.
    uint32 public immutable defaultPeriod;

    /// The key allowed to submit batches (the market engine); zero while revoked.
    address public operator;
    /// The community treasury account.
    address public treasury;
    /// Operator proposed by the owner, and when it may take over.
    PendingChange public pendingOperator;
    /// Treasury proposed by the owner, and when it may take over.
    PendingChange public pendingTreasury;
    /// When the pending owner may accept ownership.
    uint64 public ownershipReadyAt;

    mapping(address account => Account) private _accounts;
    mapping(address account => NextTerms) private _nextTerms;
    /// Each account's requested withdrawal.
    mapping(address account => Withdrawal) public withdrawalOf;
    /// What each account owes (unpaid debits), collected from its next credits and deposits.
    mapping(address account => uint256) public debtOf;
    /// Merkle root of each settled batch; zero means "not settled".
    mapping(uint64 batchId => bytes32) public batchRoot;
    /// Sum of all available balances.
    uint256 public totalBalances;
    /// Sum of all requested, unpaid withdrawals. Tokens held = totalBalances + this.
    uint256 public totalPendingWithdrawals;
    /// Sum of all debts (owed to the treasury; not backed by tokens until collected).
    uint256 public totalDebt;
    /// Where settled local sales are credited for rewards (MeterStaking); zero: nowhere.
    ISalesRecorder public salesRecorder;

    /// Someone other than the operator tried to settle.
    error NotOperator(address caller);
    /// The batch id was settled before (a retry of a confirmed batch).
    error BatchAlreadySettled(uint64 batchId);
    /// A batch must commit to a non-zero Merkle root.
    error EmptyRoot();
    /// The deltas do not sum to zero.
    error BatchNotBalanced(int256 sum);
    /// Accounts in a batch must be strictly ascending (no duplicates, canonical order).
    error AccountsNotAscending(address previous, address account);
    /// A batch named, or a deposit went to, an address whose key never opened an account.
    error AccountNotOpened(address account);
    /// A withdrawal request larger than the available balance.
    error InsufficientBalance(address account, uint256 balance, uint256 amount);
    /// A zero amount or zero address where a real one is needed.
    error ZeroAmount();
    /// A zero address where a real one is needed.
    error ZeroAddress();
    /// An allowance period other than an hour, a day, a week or 30 days, or an amount that is
    /// not `m × 10^e` with m < 2^32.
    error InvalidTerms(uint256 amount, uint256 period);
    /// Deployment parameters that cannot work (named).
    error InvalidConfig(string name);
    /// The timelock or withdrawal delay has not passed yet.
    error TooEarly(uint256 readyAt);
    /// Nothing is pending (no withdrawal, no proposed change).
    error NothingPending();
    /// The signature does not come from the account's key.
    error InvalidSignature(address account);

    /// `account`'s balance grew by `amount` tokens received from `from`.
    event Deposited(address indexed account, address indexed from, uint256 amount);
    /// `account` opened its account (proved it holds the key).
    event AccountOpened(address indexed account);
    /// `account` asked to withdraw `amount`, payable from `readyAt`.
    event WithdrawalRequested(address indexed account, uint256 amount, uint64 readyAt);
    /// `account` took its pending withdrawal back into its balance.
    event WithdrawalCancelled(address indexed account, uint256 amount);
    /// `account` took `amount` tokens out.
    event Withdrawn(address indexed account, uint256 amount);
    /// `account`'s operator allowance becomes `amount` per `period` seconds at `effectiveAt`.
    event AllowanceChanged(address indexed account, uint256 amount, uint256 period, uint256 effectiveAt);
    /// A batch debited `account` `amount` more than its balance or allowance covered.
    event DebtRecorded(address indexed account, uint64 indexed batchId, uint256 amount);
    /// `amount` of `account`'s debt was collected and repaid to the treasury.
    event DebtCollected(address indexed account, uint256 amount);
    /// Batch `batchId` left `shortfall` unpaid: the treasury fronted `fronted`, the batch's
    /// credits were cut pro rata by the rest (`cut`).
    event ShortfallCovered(uint64 indexed batchId, uint256 shortfall, uint256 fronted, uint256 cut);
    /// A slot was settled; `deltas` are the packed (account, int96) words as sent.
    event BatchSettled(uint64 indexed batchId, bytes32 root, bytes32[] deltas);
    /// The owner proposed `operator`, who may take over from `readyAt`.
    event OperatorChangeProposed(address indexed operator, uint64 readyAt);
    /// The operator key changed (zero: revoked).
    event OperatorChanged(address indexed previous, address indexed operator);
    /// The owner proposed `treasury`, effective from `readyAt`.
    event TreasuryChangeProposed(address indexed treasury, uint64 readyAt);
    /// The treasury changed.
    event TreasuryChanged(address indexed previous, address indexed treasury);
    /// `newOwner` may accept ownership from `readyAt`.
    event OwnershipTransferScheduled(address indexed newOwner, uint64 readyAt);
    /// Settled sales are now credited to `recorder`.
    event SalesRecorderChanged(address indexed recorder);
    /// Crediting a batch's sales failed; the batch settled anyway.
    event SalesNotCredited(uint64 indexed batchId, bytes reason);

    constructor(IERC20 token, address owner_, address operator_, Config memory c)
        Ownable(owner_)
        EIP712("Gridshare Settlement", "1")
    {
        if (operator_ == address(0) || c.treasury == address(0)) revert ZeroAddress();
        if (c.withdrawalDelay == 0) revert InvalidConfig("withdrawalDelay");
        // Households must be able to leave before a newly proposed operator acts.
        if (c.governanceDelay <= c.withdrawalDelay) revert InvalidConfig("governanceDelay");
        if (c.defaultPeriod < 1 hours || c.defaultPeriod > 30 days) revert InvalidConfig("defaultPeriod");
        paymentToken = token;
        withdrawalDelay = c.withdrawalDelay;
        governanceDelay = c.governanceDelay;
        defaultAllowance = c.defaultAllowance;
        defaultPeriod = c.defaultPeriod;
        operator = operator_;
        emit OperatorChanged(address(0), operator_);
        _setTreasury(c.treasury);
    }

    // ---- governance (timelocked) ----

    /// Proposes a new operator key; it may be activated `governanceDelay` from now.
    function proposeOperator(address operator_) external onlyOwner {
        emit OperatorChangeProposed(operator_, _propose(pendingOperator, operator_));
    }

    /// Makes the proposed operator the operator once its delay has passed (anyone may call).
    function activateOperator() external {
        address next = _activate(pendingOperator);
        emit OperatorChanged(operator, next);
        operator = next;
    }

    /// Removes the operator at once (a leaked key): settlement stops, no money moves. Taking
    /// power away needs no delay; giving it needs `proposeOperator`.
    function revokeOperator() external onlyOwner {
        emit OperatorChanged(operator, address(0));
        operator = address(0);
    }

    /// Proposes a new treasury account; it may be activated `governanceDelay` from now.
    function proposeTreasury(address treasury_) external onlyOwner {
        emit TreasuryChangeProposed(treasury_, _propose(pendingTreasury, treasury_));
    }

    /// Makes the proposed treasury the treasury once its delay has passed (anyone may call).
    function activateTreasury() external {
        _setTreasury(_activate(pendingTreasury));
    }

    function _propose(PendingChange storage change, address next) private returns (uint64 readyAt) {
        if (next == address(0)) revert ZeroAddress();
        readyAt = uint64(block.timestamp + governanceDelay);
        change.next = next;
        change.readyAt = readyAt;
    }

    function _activate(PendingChange storage change) private returns (address next) {
        next = change.next;
        if (next == address(0)) revert NothingPending();
        if (block.timestamp < change.readyAt) revert TooEarly(change.readyAt);
        delete change.next;
        delete change.readyAt;
    }

    /// Starts an ownership transfer; `newOwner` may accept `governanceDelay` from now.
    function transferOwnership(address newOwner) public override onlyOwner {
        super.transferOwnership(newOwner);
        uint64 readyAt = uint64(block.timestamp + governanceDelay);
        ownershipReadyAt = readyAt;
        emit OwnershipTransferScheduled(newOwner, readyAt);
    }

    /// The pending owner takes over, once the delay has passed.
    function acceptOwnership() public override {
        if (block.timestamp < ownershipReadyAt) revert TooEarly(ownershipReadyAt);
        super.acceptOwnership();
    }

    /// Names the contract that credits settled local sales for rewards (MeterStaking). It is
    /// called in `try`, after balances are final: it can neither move money nor fail a batch
    /// (the engine can always settle with plain `settle`).
    function setSalesRecorder(ISalesRecorder recorder) external onlyOwner {
        salesRecorder = recorder;
        emit SalesRecorderChanged(address(recorder));
    }

    function _setTreasury(address treasury_) private {
        _open(treasury_);
        emit TreasuryChanged(treasury, treasury_);
        treasury = treasury_;
    }

    // ---- accounts ----

    /// Opens the caller's account: batches may credit and debit it from now on.
    function openAccount() external {
        _open(msg.sender);
    }

    /// Opens `account` with its key's EIP-712 signature of `OpenAccount(account)` (an ECDSA
    /// key, or an ERC-1271 contract wallet), so a key without gas money can still be linked.
    function openAccountFor(address account, bytes calldata signature) external {
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(OPEN_ACCOUNT_TYPEHASH, account)));
        if (!SignatureChecker.isValidSignatureNow(account, digest, signature)) revert InvalidSignature(account);
        _open(account);
    }

    function _open(address account) private {
        Account storage a = _accounts[account];
        if (a.flags & OPENED == 0) {
            a.flags |= OPENED;
            emit AccountOpened(account);
        }
    }

    /// Whether `account` was opened by its key.
    function isOpen(address account) external view returns (bool) {
        return _accounts[account].flags & OPENED != 0;
    }

    /// Available balance of `account` (requested withdrawals excluded).
    function balanceOf(address account) external view returns (uint256) {
        return _accounts[account].balance;
    }

    /// Sets how much the operator may take from the caller per `period` seconds: an hour, a
    /// day, a week or 30 days; `amount` is `m × 10^e` with m < 2^32 (any round figure). Looser
    /// terms (no smaller amount, no longer period) apply at once; stricter ones after
    /// `withdrawalDelay`, so the engine learns of them before it accepts bids they would not
    /// pay for.
    /// @dev Design: the terms live in the account's own storage word, packed, so a batch that
    /// debits an account which set its own allowance reads no second slot.
    function setAllowance(uint80 amount, uint32 period) external {
        uint8 index = _periodIndex(period);
        (uint32 mantissa, uint8 exponent) = _encode(amount);
        if (index == type(uint8).max || exponent == type(uint8).max) revert InvalidTerms(amount, period);
        Account memory a = _accounts[msg.sender];
        _promote(msg.sender, a);
        (uint256 current, uint256 currentPeriod) = _termsOf(msg.sender, a);
        uint256 effectiveAt = block.timestamp;
        if (amount >= current && period <= currentPeriod) {
            a.mantissa = mantissa;
            a.exponent = exponent;
            a.flags = (a.flags & ~uint8(HAS_NEXT | (3 << PERIOD_SHIFT))) | HAS_TERMS | (index << PERIOD_SHIFT);
        } else {
            effectiveAt += withdrawalDelay;
            _nextTerms[msg.sender] = NextTerms(amount, period, uint32(effectiveAt));
            a.flags |= HAS_NEXT;
        }
        _accounts[msg.sender] = a;
        emit AllowanceChanged(msg.sender, amount, period, effectiveAt);
    }

    /// `account`'s allowance terms in force now, and what the operator may still take in the
    /// current window.
    function allowanceOf(address account) external view returns (uint256 amount, uint256 period, uint256 remaining) {
        Account memory a = _accounts[account];
        (amount, period) = _termsOf(account, a);
        remaining = _remaining(a, amount, period);
    }

    function _periodIndex(uint256 period) private pure returns (uint8) {
        if (period == 1 hours) return 0;
        if (period == 1 days) return 1;
        if (period == 7 days) return 2;
        if (period == 30 days) return 3;
        return type(uint8).max;
    }

    function _periodOf(uint8 flags) private pure returns (uint256) {
        uint256 index = (flags >> PERIOD_SHIFT) & 3;
        if (index == 0) return 1 hours;
        if (index == 1) return 1 days;
        if (index == 2) return 7 days;
        return 30 days;
    }

    /// `amount` as `mantissa × 10^exponent` with mantissa < 2^32; exponent 255: not exact.
    function _encode(uint256 amount) private pure returns (uint32, uint8) {
        uint8 exponent;
        while (amount > type(uint32).max) {
            if (amount % 10 != 0) return (0, type(uint8).max);
            amount /= 10;
            ++exponent;
        }
        return (uint32(amount), exponent);
    }

    /// Moves stricter terms whose delay has passed into the account word (in memory).
    function _promote(address account, Account memory a) private view {
        if (a.flags & HAS_NEXT == 0) return;
        NextTerms memory n = _nextTerms[account];
        if (block.timestamp < n.effectiveAt) return;
        (uint32 mantissa, uint8 exponent) = _encode(n.amount);
        a.mantissa = mantissa;
        a.exponent = exponent;
        a.flags = (a.flags & ~uint8(HAS_NEXT | (3 << PERIOD_SHIFT))) | HAS_TERMS
            | (_periodIndex(n.period) << PERIOD_SHIFT);
    }

    function _termsOf(address account, Account memory a) private view returns (uint256, uint256) {
        if (a.flags & HAS_NEXT != 0) {
            NextTerms memory n = _nextTerms[account];
            if (block.timestamp >= n.effectiveAt) return (n.amount, n.period);
        }
        if (a.flags & HAS_TERMS == 0) return (defaultAllowance, defaultPeriod);
        return (uint256(a.mantissa) * 10 ** uint256(a.exponent), _periodOf(a.flags));
    }

    function _remaining(Account memory a, uint256 amount, uint256 period) private view returns (uint256) {
        if (block.timestamp >= uint256(a.windowStart) + period) return amount;
        return a.spent >= amount ? 0 : amount - a.spent;
    }

    /// Takes up to `want` from `account`'s allowance (in memory); returns what it allows.
    function _spend(address account, Account memory a, uint256 want) private view returns (uint256 take) {
        if (want == 0) return 0;
        _promote(account, a);
        (uint256 amount, uint256 period) = _termsOf(account, a);
        if (block.timestamp >= uint256(a.windowStart) + period) {
            a.windowStart = uint32(block.timestamp);
            a.spent = 0;
        }
        uint256 left = a.spent >= amount ? 0 : amount - a.spent;
        take = want < left ? want : left;
        a.spent += uint80(take);
    }

    /// Collects up to `available` of `account`'s debt, within its allowance; the caller repays
    /// the treasury.
    function _collect(address account, Account memory a, uint256 available) private returns (uint256 k) {
        uint256 debt = debtOf[account];
        k = _spend(account, a, debt < available ? debt : available);
        if (k == 0) return 0;
        debt -= k;
        debtOf[account] = debt;
        totalDebt -= k;
        if (debt == 0) a.flags &= ~INDEBTED;
        emit DebtCollected(account, k);
    }

    // ---- deposits and withdrawals ----

    /// Deposits `amount` tokens from the caller to its own balance (opening its account).
    function deposit(uint256 amount) external {
        _deposit(msg.sender, msg.sender, amount);
    }

    /// `deposit` with an EIP-2612 permit instead of a prior approval. A permit already used
    /// (e.g. copied from the mempool) does not fail the deposit while the allowance suffices.
    function depositWithPermit(uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s) external {
        try IERC20Permit(address(paymentToken)).permit(msg.sender, address(this), amount, deadline, v, r, s) {}
            catch {}
        _deposit(msg.sender, msg.sender, amount);
    }

    /// Deposits `amount` tokens from the caller to `account`'s balance; `account` must be open.
    function depositFor(address account, uint256 amount) external {
        _deposit(msg.sender, account, amount);
    }

    /// @dev Credits what actually arrived, so a fee-on-transfer token cannot create balance the
    /// contract does not hold. Debt is collected first (within the allowance).
    function _deposit(address from, address account, uint256 amount) private nonReentrant {
        if (amount == 0 || account == address(0)) revert ZeroAmount();
        Account memory a = _accounts[account];
        if (a.flags & OPENED == 0) {
            if (from != account) revert AccountNotOpened(account);
            a.flags |= OPENED;
            emit AccountOpened(account);
        }
        uint256 before = paymentToken.balanceOf(address(this));
        paymentToken.safeTransferFrom(from, address(this), amount);
        uint256 received = paymentToken.balanceOf(address(this)) - before;
        uint256 k = a.flags & INDEBTED != 0 ? _collect(account, a, received) : 0;
        a.balance = (uint256(a.balance) + received - k).toUint96();
        _accounts[account] = a;
        totalBalances += received;
        emit Deposited(account, from, received);
        if (k != 0) _repayTreasury(k);
    }

    /// Moves `amount` of the caller's balance into a withdrawal payable `withdrawalDelay` from
    /// now (a further request adds to it and restarts the delay). Until it is paid, batches
    /// take due debits from it, so no withdrawal can leave a bill unpaid.
    function requestWithdrawal(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Account storage a = _accounts[msg.sender];
        uint256 balance = a.balance;
        if (balance < amount) revert InsufficientBalance(msg.sender, balance, amount);
        a.balance = uint96(balance - amount);
        Withdrawal storage w = withdrawalOf[msg.sender];
        uint64 readyAt = uint64(block.timestamp + withdrawalDelay);
        w.amount = (uint256(w.amount) + amount).toUint128();
        w.readyAt = readyAt;
        totalBalances -= amount;
        totalPendingWithdrawals += amount;
        emit WithdrawalRequested(msg.sender, amount, readyAt);
    }

    /// Takes the caller's pending withdrawal back into its balance.
    function cancelWithdrawal() external {
        uint256 amount = withdrawalOf[msg.sender].amount;
        if (amount == 0) revert NothingPending();
        delete withdrawalOf[msg.sender];
        Account storage a = _accounts[msg.sender];
        a.balance = (uint256(a.balance) + amount).toUint96();
        totalPendingWithdrawals -= amount;
        totalBalances += amount;
        emit WithdrawalCancelled(msg.sender, amount);
    }

    /// Pays out the caller's pending withdrawal once its delay has passed, less any debt
    /// (collected within the allowance, repaid to the treasury).
    function withdraw() external nonReentrant {
        Withdrawal memory w = withdrawalOf[msg.sender];
        if (w.amount == 0) revert NothingPending();
        if (block.timestamp < w.readyAt) revert TooEarly(w.readyAt);
        delete withdrawalOf[msg.sender];
        totalPendingWithdrawals -= w.amount;
        uint256 pay = w.amount;
        Account memory a = _accounts[msg.sender];
        if (a.flags & INDEBTED != 0) {
            uint256 k = _collect(msg.sender, a, pay);
            _accounts[msg.sender] = a;
            if (k != 0) {
                pay -= k;
                // The collected part stays in the contract as the treasury's balance.
                totalBalances += k;
                _repayTreasury(k);
            }
        }
        emit Withdrawn(msg.sender, pay);
        if (pay != 0) paymentToken.safeTransfer(msg.sender, pay);
    }

    function _repayTreasury(uint256 k) private {
        Account storage t = _accounts[treasury];
        t.balance = (uint256(t.balance) + k).toUint96();
    }

    // ---- settlement ----

    /// Applies one slot's net deltas. Reverts, changing nothing, unless the caller is the
    /// operator, the batch id is new, the root is non-zero, accounts ascend, every account is
    /// open and the deltas sum to zero. It never reverts for lack of money: each debit takes
    /// what the account's balance, pending withdrawal and allowance allow, and the rest is
    /// recorded as the account's debt (see `_cover` for who carries it meanwhile). No tokens
    /// move: only internal balances change.
    function settle(uint64 batchId, bytes32 root, bytes32[] calldata deltas) external {
        _settle(batchId, root, deltas);
    }

    /// Settles a batch as `settle` does and credits its local sales (seller meter, buyer meter,
    /// Wh, for the slot that started at `deliveredAtMs`) to the rewards of the seller meters.
    /// A failure to credit never fails the batch: it is reported in `SalesNotCredited`.
    function settleWithSales(
        uint64 batchId,
        bytes32 root,
        bytes32[] calldata deltas,
        uint64 deliveredAtMs,
        Sale[] calldata sales
    ) external {
        _settle(batchId, root, deltas);
        ISalesRecorder recorder = salesRecorder;
        if (address(recorder) != address(0) && sales.length != 0) {
            try recorder.creditSales(deliveredAtMs, sales) {}
            catch (bytes memory reason) {
                emit SalesNotCredited(batchId, reason);
            }
        }
    }

    function _settle(uint64 batchId, bytes32 root, bytes32[] calldata deltas) private {
        if (msg.sender != operator) revert NotOperator(msg.sender);
        if (batchRoot[batchId] != bytes32(0)) revert BatchAlreadySettled(batchId);
        if (root == bytes32(0)) revert EmptyRoot();
        batchRoot[batchId] = root;

        Tally memory t;
        // Pass 1: order, balance and every debit.
        int256 sum;
        uint256 previous;
        uint256 n = deltas.length;
        for (uint256 i; i < n; ++i) {
            uint256 word = uint256(deltas[i]);
            uint256 key = word >> 96;
            if (key <= previous) revert AccountsNotAscending(address(uint160(previous)), address(uint160(key)));
            previous = key;
            // Sign-extend the low 96 bits.
            int256 delta = int256(int96(uint96(word)));
            // |delta| < 2^95 and n is bounded by calldata, so the sum cannot overflow int256.
            unchecked {
                sum += delta;
            }
            if (delta < 0) _debit(address(uint160(key)), uint256(-delta), batchId, t);
        }
        if (sum != 0) revert BatchNotBalanced(sum);
        if (t.shortfall != 0) _cover(batchId, t);
        // Pass 2: every credit, cut pro rata by what nobody covered.
        for (uint256 i; i < n; ++i) {
            uint256 word = uint256(deltas[i]);
            int256 delta = int256(int96(uint96(word)));
            if (delta > 0) _credit(address(uint160(word >> 96)), uint256(delta), t);
        }
        // Rounding the cuts up leaves their excess over `uncovered` with the treasury.
        uint256 toTreasury = t.repaid + (t.cut - t.uncovered);
        if (toTreasury != 0) _repayTreasury(toTreasury);
        if (t.fromPending != 0) {
            totalPendingWithdrawals -= t.fromPending;
            totalBalances += t.fromPending;
        }
        emit BatchSettled(batchId, root, deltas);
    }

    function _debit(address account, uint256 d, uint64 batchId, Tally memory t) private {
        t.debits += d;
        Account memory a = _accounts[account];
        if (a.flags & OPENED == 0) revert AccountNotOpened(account);
        uint256 balance = a.balance;
        uint256 have = balance;
        uint256 pending;
        if (have < d) {
            pending = withdrawalOf[account].amount;
            have += pending;
        }
        uint256 taken = _spend(account, a, d < have ? d : have);
        uint256 fromBalance = taken < balance ? taken : balance;
        a.balance = uint96(balance - fromBalance);
        if (taken > fromBalance) {
            uint256 fromPending = taken - fromBalance;
            withdrawalOf[account].amount = uint128(pending - fromPending);
            t.fromPending += fromPending;
        }
        if (d > taken) {
            uint256 shortfall = d - taken;
            debtOf[account] += shortfall;
            totalDebt += shortfall;
            a.flags |= INDEBTED;
            t.shortfall += shortfall;
            emit DebtRecorded(account, batchId, shortfall);
        }
        _accounts[account] = a;
    }

    /// @dev Design: the community treasury fronts what debtors could not pay, within the
    /// treasury's own balance and allowance, and is repaid from the debtors' next credits and
    /// deposits. The community admitted the orders (its engine checks funds before a bid
    /// enters the book), so it carries the risk of its own admission, not the neighbours who
    /// delivered energy in good faith. Only what the treasury cannot front is cut from this
    /// batch's credits, pro rata and rounded up (the rounding excess goes to the treasury);
    /// the cut is public in `ShortfallCovered`, and the debt stays owed to the treasury, which
    /// the community answers for to the sellers. Either way the batch balances and the
    /// contract stays solvent: tokens held = totalBalances + totalPendingWithdrawals.
    function _cover(uint64 batchId, Tally memory t) private {
        address tr = treasury;
        Account memory a = _accounts[tr];
        uint256 fronted = _spend(tr, a, t.shortfall < a.balance ? t.shortfall : a.balance);
        a.balance -= uint96(fronted);
        _accounts[tr] = a;
        t.uncovered = t.shortfall - fronted;
        emit ShortfallCovered(batchId, t.shortfall, fronted, t.uncovered);
    }

    function _credit(address account, uint256 c, Tally memory t) private {
        if (t.uncovered != 0) {
            // uncovered <= debits, so cut <= c.
            uint256 cut = (c * t.uncovered + t.debits - 1) / t.debits;
            c -= cut;
            t.cut += cut;
        }
        Account memory a = _accounts[account];
        if (a.flags & OPENED == 0) revert AccountNotOpened(account);
        uint256 k = a.flags & INDEBTED != 0 ? _collect(account, a, c) : 0;
        t.repaid += k;
        a.balance = (uint256(a.balance) + c - k).toUint96();
        _accounts[account] = a;
    }

    // ---- proofs ----

    /// Whether the trade with these fields is in settled batch `batchId`'s tree. The leaf is
    /// rebuilt here from the fields, so no inner node of the tree can pass for a trade.
    function verifyTrade(
        uint64 batchId,
        address buyer,
        address seller,
        uint64 energyWh,
        uint256 amount,
        bytes32[] calldata proof
    ) external view returns (bool) {
        bytes32 root = batchRoot[batchId];
        return root != bytes32(0)
            && MerkleProof.verifyCalldata(proof, root, tradeLeaf(batchId, buyer, seller, energyWh, amount));
    }

    /// Whether the signed reading with SHA-256 digest `readingDigest` is in batch `batchId`'s
    /// tree (the leaf is rebuilt here, as in `verifyTrade`).
    function verifyReading(uint64 batchId, bytes32 readingDigest, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        bytes32 root = batchRoot[batchId];
        return root != bytes32(0) && MerkleProof.verifyCalldata(proof, root, readingLeaf(batchId, readingDigest));
    }

    /// The leaf of one trade: double keccak of its ABI encoding, so a leaf can never be read as
    /// an inner node. `amount` is what the buyer paid, fees included (the market engine's
    /// `buyer_pays`; the seller received it less the trade's fees).
    function tradeLeaf(uint64 batchId, address buyer, address seller, uint64 energyWh, uint256 amount)
        public
        pure
        returns (bytes32)
    {
        return keccak256(bytes.concat(keccak256(abi.encode(uint8(1), batchId, buyer, seller, energyWh, amount))));
    }

    /// The leaf of one signed reading the slot relied on: double keccak of (kind 2, batch id,
    /// sha256 of the reading's encoding).
    function readingLeaf(uint64 batchId, bytes32 readingDigest) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(uint8(2), batchId, readingDigest))));
    }
}
