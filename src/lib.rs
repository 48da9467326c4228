//! whatsnap-mac: the SMS/iMessage account of WhatSnap, on your own Mac.

pub mod apple_time;
pub mod chatdb;
pub mod send;
pub mod sim;
