// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title Gridshare network token
/// @notice The token operators stake on their meters and earn as rewards. A fixed supply is
/// minted once to a treasury; rewards are paid from what the treasury funds into MeterStaking,
/// so no contract holds a mint right that could inflate the supply.
/// @dev EIP-2612 permit (EIP-712 domain: name, version "1", chain id, this contract) lets an
/// operator approve and stake in one transaction.
contract GridToken is ERC20, ERC20Permit {
    constructor(address treasury, uint256 supply) ERC20("Gridshare", "GRID") ERC20Permit("Gridshare") {
        _mint(treasury, supply);
    }
}
