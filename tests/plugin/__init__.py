"""Tests of the Buildbot plugin: conversion, tracker, outbox, and real masters against real servers."""
