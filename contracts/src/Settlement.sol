// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable, Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ISalesRecorder, Sale} from "./MeterStaking.sol";

/// @title Per-slot net settlement of the neighbourhood market
/// @notice Participants deposit the payment token and withdraw what is theirs. After each
/// delivery slot the market engine's operator key submits one batch: the net change of every
/// account that traded or earned a fee, and the Merkle root of the slot's trades and readings.
/// @dev Design: the batch carries net deltas, not trades, so its cost grows with the number of
/// accounts touched (one storage write each) rather than with the number of trades. Each
/// delta is one packed word: the account in the high 160 bits and a two's-complement int96
/// amount in the low 96 bits. Accounts must be strictly ascending, so an account appears once
/// and every batch has one canonical encoding. Balances can be rebuilt by anyone from
/// `Deposited`, `Withdrawn` and `BatchSettled`.
contract Settlement is Ownable2Step, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// The payment token (any ERC-20, e.g. a stablecoin).
    IERC20 public immutable paymentToken;
    /// The key allowed to submit batches (the market engine).
    address public operator;
    /// Balance of each participant in the payment token's smallest unit.
    mapping(address account => uint256) public balanceOf;
    /// Merkle root of each settled batch; zero means "not settled".
    mapping(uint64 batchId => bytes32) public batchRoot;
    /// Sum of all balances; equals the tokens this contract holds for participants.
    uint256 public totalBalances;
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
    /// Applying the batch would take an account below zero.
    error InsufficientBalance(address account, uint256 balance, int256 delta);
    /// A zero amount or zero address where a real one is needed.
    error ZeroAmount();
    /// The operator cannot be the zero address.
    error ZeroOperator();

    /// `account`'s balance grew by `amount` tokens received from `from`.
    event Deposited(address indexed account, address indexed from, uint256 amount);
    /// `account` took `amount` tokens out.
    event Withdrawn(address indexed account, uint256 amount);
    /// A slot was settled; `deltas` are the packed (account, int96) words applied.
    event BatchSettled(uint64 indexed batchId, bytes32 root, bytes32[] deltas);
    /// The operator key changed.
    event OperatorChanged(address indexed previous, address indexed operator);
    /// Settled sales are now credited to `recorder`.
    event SalesRecorderChanged(address indexed recorder);
    /// Crediting a batch's sales failed; the batch settled anyway.
    event SalesNotCredited(uint64 indexed batchId, bytes reason);

    constructor(IERC20 token, address owner_, address operator_) Ownable(owner_) {
        if (operator_ == address(0)) revert ZeroOperator();
        paymentToken = token;
        operator = operator_;
        emit OperatorChanged(address(0), operator_);
    }

    /// Replaces the operator key (e.g. after a key rotation).
    function setOperator(address operator_) external onlyOwner {
        if (operator_ == address(0)) revert ZeroOperator();
        emit OperatorChanged(operator, operator_);
        operator = operator_;
    }

    /// Names the contract that credits settled local sales for rewards (MeterStaking).
    function setSalesRecorder(ISalesRecorder recorder) external onlyOwner {
        salesRecorder = recorder;
        emit SalesRecorderChanged(address(recorder));
    }

    /// Deposits `amount` tokens from the caller to its own balance.
    function deposit(uint256 amount) external {
        depositFor(msg.sender, amount);
    }

    /// Deposits `amount` tokens from the caller to `account`'s balance.
    /// @dev Credits what actually arrived, so a fee-on-transfer token cannot create balance
    /// the contract does not hold.
    function depositFor(address account, uint256 amount) public nonReentrant {
        if (amount == 0 || account == address(0)) revert ZeroAmount();
        uint256 before = paymentToken.balanceOf(address(this));
        paymentToken.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = paymentToken.balanceOf(address(this)) - before;
        balanceOf[account] += received;
        totalBalances += received;
        emit Deposited(account, msg.sender, received);
    }

    /// Withdraws `amount` of the caller's balance.
    function withdraw(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        uint256 balance = balanceOf[msg.sender];
        if (balance < amount) revert InsufficientBalance(msg.sender, balance, -int256(amount));
        balanceOf[msg.sender] = balance - amount;
        totalBalances -= amount;
        emit Withdrawn(msg.sender, amount);
        paymentToken.safeTransfer(msg.sender, amount);
    }

    /// Applies one slot's net deltas. Reverts, changing nothing, unless the batch id is new,
    /// the root is non-zero, accounts ascend, every balance stays at or above zero and the
    /// deltas sum to zero. No tokens move: only internal balances change.
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

        int256 sum;
        uint256 previous;
        uint256 n = deltas.length;
        for (uint256 i; i < n; ++i) {
            uint256 word = uint256(deltas[i]);
            uint256 key = word >> 96;
            if (key <= previous) revert AccountsNotAscending(address(uint160(previous)), address(uint160(key)));
            previous = key;
            address account = address(uint160(key));
            // Sign-extend the low 96 bits.
            int256 delta = int256(int96(uint96(word)));
            uint256 balance = balanceOf[account];
            if (delta < 0) {
                uint256 debit = uint256(-delta);
                if (debit > balance) revert InsufficientBalance(account, balance, delta);
                unchecked {
                    balanceOf[account] = balance - debit;
                }
            } else {
                balanceOf[account] = balance + uint256(delta);
            }
            // |delta| < 2^95 and n is bounded by calldata, so the sum cannot overflow int256.
            unchecked {
                sum += delta;
            }
        }
        if (sum != 0) revert BatchNotBalanced(sum);
        emit BatchSettled(batchId, root, deltas);
    }

    /// Whether `leaf` is in the Merkle tree of settled batch `batchId` (OpenZeppelin sorted-pair
    /// keccak tree; see `tradeLeaf` for how a trade becomes a leaf).
    function verifyLeaf(uint64 batchId, bytes32 leaf, bytes32[] calldata proof) external view returns (bool) {
        bytes32 root = batchRoot[batchId];
        return root != bytes32(0) && MerkleProof.verifyCalldata(proof, root, leaf);
    }

    /// The leaf of one trade: double keccak of its ABI encoding, so a leaf can never be read as
    /// an inner node. `amount` is what the buyer paid the seller, fees excluded.
    function tradeLeaf(uint64 batchId, address buyer, address seller, uint64 energyWh, uint256 amount)
        external
        pure
        returns (bytes32)
    {
        return keccak256(bytes.concat(keccak256(abi.encode(uint8(1), batchId, buyer, seller, energyWh, amount))));
    }

    /// The leaf of one signed reading the slot relied on: double keccak of (kind 2, batch id,
    /// sha256 of the 222-byte encoding).
    function readingLeaf(uint64 batchId, bytes32 readingDigest) external pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(uint8(2), batchId, readingDigest))));
    }
}
